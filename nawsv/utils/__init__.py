"""Small shared helpers: errors, atomic writes, typed configs, seeding, logging, entry points."""

"""Test conditions of stage 6: the clean test set and its noisy copies ``<test_set>_<category>_<snr>``."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from nawsv.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CLEAN = "clean"


@dataclasses.dataclass(frozen=True)
class Condition:
    """One test condition; ``category`` and ``snr`` are None for the clean set."""

    name: str          # "clean" or "<category>_<snr>"
    set_name: str      # the embedding set: <test_set> or <test_set>_<category>_<snr>
    category: str | None = None
    snr: int | None = None

    @property
    def is_clean(self) -> bool:
        return self.category is None


def parse_condition(name: str) -> tuple[str, int] | None:
    """``"babble_10"`` -> ("babble", 10); None when ``name`` is not ``<category>_<integer snr>``."""
    category, _, snr = name.rpartition("_")
    try:
        return (category, int(snr)) if category else None
    except ValueError:
        return None


def _sort_key(condition: Condition, categories: Sequence[str], snrs: Sequence[int]) -> tuple[int, int, str]:
    category_rank = categories.index(condition.category) if condition.category in categories else len(categories)
    snr_rank = snrs.index(condition.snr) if condition.snr in snrs else len(snrs)
    return category_rank, snr_rank, condition.name


def discover_conditions(embeddings_dir: Path, test_set: str, categories: Sequence[str], snrs: Sequence[int],
                        explicit: Sequence[str] = ()) -> list[Condition]:
    """Clean first, then the noisy sets found (or listed) in category order and SNR order."""
    if not (embeddings_dir / test_set).is_dir():
        raise DataError(f"no embeddings of the clean test set: {embeddings_dir / test_set} does not exist; run stage 5 "
                        f"(extraction) for {test_set}, or check --test_set")
    noisy: list[Condition] = []
    if explicit:
        for name in explicit:
            parsed = parse_condition(name)
            if parsed is None:
                raise ConfigError(f"conditions: {name!r} is not of the form <category>_<snr> (e.g. noise_0)")
            if not (embeddings_dir / f"{test_set}_{name}").is_dir():
                raise DataError(f"condition {name!r} is listed in the config but {embeddings_dir}/{test_set}_{name} "
                                f"does not exist; run stage 5 for it or remove it from conditions")
            noisy.append(Condition(name, f"{test_set}_{name}", *parsed))
    else:
        prefix = f"{test_set}_"
        for path in sorted(embeddings_dir.glob(f"{prefix}*")):
            if not path.is_dir():
                continue
            name = path.name[len(prefix):]
            parsed = parse_condition(name)
            if parsed is None or parsed[0] not in categories or parsed[1] not in snrs:
                log.warning("ignoring embedding set %s: not <test_set>_<category>_<snr> with a category in %s and "
                            "an SNR in %s (change categories/snrs in the score config to include it)",
                            path.name, list(categories), list(snrs))
                continue
            noisy.append(Condition(name, path.name, *parsed))
    noisy.sort(key=lambda c: _sort_key(c, list(categories), list(snrs)))
    return [Condition(CLEAN, test_set)] + noisy

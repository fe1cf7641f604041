# Options of the mini recipe (run.sh --name value); all data is generated, nothing to download.
corpus=$recipe/corpus            # where the synthetic corpora are written
recipe_options="corpus"
train_set=mini_dev
test_sets=mini_test

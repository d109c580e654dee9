#!/usr/bin/env bash
# One function per rule (issue 19): for each rule, the one place it is written, then any
# place under src/ that writes it again inline. Exit status 1 if any rule is written twice.
#
#   bash scripts/check_rules.sh
#
# The import circles and file lengths are checked by tests/test_import_graph.py
# (`python tests/test_import_graph.py` prints them).
set -uo pipefail
cd "$(dirname "$0")/../src/napari_ish_annotator"
status=0

rule() {  # rule TITLE DEFINITION-REGEX HOME-FILE INLINE-REGEX
  local title=$1 definition=$2 home=$3 inline=$4 hits
  echo "== $title"
  grep -rnE --include='*.py' "$definition" . | sed 's/^/   defined: /'
  hits=$(grep -rnE --include='*.py' "$inline" . | grep -v "^\./$home:")
  if [ -n "$hits" ]; then
    echo "$hits" | sed 's/^/   AGAIN:   /'
    status=1
  fi
}

# a term has both a present and an absent label (trainable / evaluable)
rule "a term has both classes" \
  '^def (class_counts|has_both_classes|trainable_terms)\(' core/learn/metrics.py \
  '== ?1\)\.any\(.*== ?0\)\.any\(|n_pos == 0 or n_neg == 0|0 < .*labels\(\)\[.*\]\.sum\(\) <'

# the mean of a per-term metric over the terms where it is defined
rule "mean over defined terms (mean AUC)" \
  '^def (defined_mean|mean_auc|per_term_auc)\(' core/learn/metrics.py \
  'nanmean|np\.mean\(.*auc|auc.*np\.mean\(|roc_auc_score\(|if a is not None\]'

# gene-grouped splits (k-fold, random partitions, held-out genes, validation)
rule "gene-grouped splits" \
  '^def (group_ids|grouped_folds|random_partitions|held_out_genes|validation_split)\(' \
  core/learn/splits.py \
  'GroupKFold|GroupShuffleSplit|choice\(unique|test_genes ='

# the Gram matrix of the feature rows (every fit and CV reads the features through it)
rule "Gram matrix of the features" \
  '^def (iter_gram|gram_matrix)\(|^class GramBlock' core/learn/ensembles.py \
  '[A-Z]\w* @ [A-Z]\w*\.T  # .*syrk|def iter_gram|def gram_matrix'

# an image takes part when it has at least one known label (issue 25: six inline copies)
rule "labelled rows (at least one known label)" \
  '^def (labelled_mask|labelled_rows)\(' core/learn/metrics.py \
  '(!= ?-1|>= ?0)\)\.any\((axis=)?1\)'

# a file name is a supported image by its suffix (issue 25: five copies)
rule "supported image suffix" \
  '^def has_image_suffix\(' core/data/images.py \
  'suffix\.lower\(\) (not )?in SUPPORTED_SUFFIXES'

# the images of a folder (the reader listed folders itself: issue 25)
rule "images in a folder" \
  '^def (iter|list)_images\(' core/data/inputs.py \
  'iterdir\(\).*has_image_suffix|has_image_suffix\(.*for .* in .*iterdir\(\)'

# the developmental stage ranges (the Annotate panel's list was a copy)
rule "stage ranges" \
  '^STAGE_RANGES' core/data/vocabulary.py \
  '"4-6", "7-8"'

# a backbone's feature layers come from its spec (the panel and --layer help had VGG16's)
rule "feature layer list" \
  '^VGG16 = ' core/backbones/specs.py \
  '"17", "21", "24"|17, 21, 24, 30'

# a model scores feature rows one way (CLI predict, session, demo): NaN rows never reach it
rule "scoring feature rows" \
  '^def predict_rows\(' core/workflow.py \
  '\.predict_both\('

# where features are computed is an explicit executor argument, never a module lookup
rule "the executor is an argument" \
  '^class DaskExecutor' core/features/distributed.py \
  'sys\.modules\.get\(.*distributed|def current_client|_current\.append'

# a file's content hash, remembered while the file is unchanged (issue 25: three wrappers and
# two (size, mtime) caches): every other place asks core/utils/hashing.py
rule "content hash of a file (cached)" \
  '^def content_hash\(|^class HashCache' core/utils/hashing.py \
  'hashlib\.file_digest|def (sha256_file|file_sha256|_sha256_cached|_content_hash|content_hash|_hash_file)\(|sha256\(.*read_bytes\(\)|iter\(lambda: fh\.read|_hash_cache|_given_cache'

# a write is rolled back keeping what stopped it (a Ctrl-C the ROLLBACK statement would clear)
rule "roll back a store's transaction" \
  '^def rollback\(' core/labels/connection.py \
  'execute\("ROLLBACK"\)'

exit $status

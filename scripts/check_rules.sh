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

exit $status

#!/usr/bin/env bash
# Rebuilds every table and figure of docs/study.md from the committed results under results/study/
# (run from the repository root: bash docs/study/make.sh). The similarity heatmaps need each data
# set's seed-0 LeNet-5 and cifar10_quick baselines (trained once when missing: a few minutes each on
# 2 CPU cores).
set -euo pipefail
out=docs/study
best="weight-value-l2-weights_removed,activation-value-l2-weights_removed,activation-taylor2_gn-abs_sum-weights_removed,weight-value-l1-layer_l1,activation-value-l1-layer_l1"
named="filter_l1,filter_l2,mean_activation,taylor_molchanov,fisher,mean_gradient,mean_squared_weight,apoz"
bases="weight-value-l1-*,weight-value-l2-*,activation-value-l1-*,activation-taylor-abs_sum-*,activation-taylor-sqr_sum-*,activation-gradient-abs_sum-*"

for grid in lenet5 cifar10_quick; do
    res=results/study/$grid
    [ -d "$res/scores" ] || { echo "skip $grid: no results yet"; continue; }
    # question 1: the named metrics' bases under every scaling, each against its unscaled self
    prunetax leaderboard "$res" --metrics "$bases" --versus scaling=none --format markdown \
        --out "$out/q1_scaling_$grid.md"
    prunetax effects "$res" --by dataset --metrics "$bases" --out "$out/q1_effects_$grid" --format png
    # question 4: the authors' best against the named metrics, random and the oracle
    prunetax leaderboard "$res" --metrics "$best,$named,random,oracle" --versus random --format markdown \
        --out "$out/q4_best_$grid.md"
    prunetax plot "$res" --out "$out/plots_$grid" --format png
    prunetax plot "$res" --out "$out/q4_curves_$grid" --metrics "$best,fisher,random,oracle" --format png
done
# question 2: every axis over the whole of paper-308 on LeNet-5
prunetax effects results/study/lenet5 --by dataset --out "$out/q2_effects_lenet5" --format png
# question 3: Domino against channel
if [ -d results/study/domino/scores ]; then
    prunetax leaderboard results/study/domino --versus structure=channel --format markdown --out "$out/q3_domino.md"
    prunetax effects results/study/domino --by network --out "$out/q3_effects_domino" --format png
    prunetax plot results/study/domino --out "$out/plots_domino" --format png
fi
# question 5: which of the 308 rank alike, and do they prune alike; on cifar10_quick, among its
# grid's metrics (question 1's 30 ids, two more of the best five, the named ones; 3 epochs, as the grid)
cq="activation-value-l2-weights_removed,activation-taylor2_gn-abs_sum-weights_removed,$named"
for base in weight-value-l1 weight-value-l2 activation-value-l1 activation-taylor-abs_sum activation-taylor-sqr_sum \
        activation-gradient-abs_sum; do
    for scaling in none elements weights_removed layer_l1 layer_l2; do cq="$cq,$base-$scaling"; done
done
for data in mnist fashion-mnist; do
    prunetax similarity --model lenet5 --dataset "$data" --seed 0 --metrics paper --results results/study/lenet5 \
        --out "$out/q5_similarity_lenet5_$data" --format png
    if [ -d results/study/cifar10_quick/scores ]; then
        prunetax similarity --model cifar10_quick --dataset "$data" --seed 0 --epochs 3 --metrics "$cq" \
            --results results/study/cifar10_quick --out "$out/q5_similarity_cifar10_quick_$data" --format png
    fi
done

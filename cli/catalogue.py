"""The built-in components' names and descriptions, so `flexsample list` starts without torch.

Registering the built-ins means importing them, and that imports torch (estimators score
tensors, losses are `nn.Module`s, datasets build tensors): seconds before the first line.
`flexsample list` prints this table instead when nothing else can add a name (no `--plugin`,
no installed entry point in any of `GROUPS`, built-ins not imported yet); otherwise it asks
the registries themselves.
tests/test_startup.py checks that the table equals what the registries describe; after adding
or renaming a built-in, regenerate it with `python -m flexsample.cli.catalogue`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# the entry-point groups of the ten registries, in `list`'s order
GROUPS = (
    "flexsample.estimators",
    "flexsample.policies",
    "flexsample.allocations",
    "flexsample.anchors",
    "flexsample.datasets",
    "flexsample.losses",
    "flexsample.samplers",
    "flexsample.trackers",
    "flexsample.launchers",
    "flexsample.recipes",
)

# (kind, name, first line of its docstring), in `list`'s order
# --- generated: python -m flexsample.cli.catalogue ---
BUILTINS: tuple[tuple[str, str, str], ...] = (
    ('estimator', 'badge', 'BADGE: k-means++ seeding on last-layer gradient embeddings (uncertain and diverse).'),  # noqa: E501
    ('estimator', 'batchbald', 'BatchBALD: greedy joint mutual information over MC draws (Kirsch et al. 2019).'),  # noqa: E501
    ('estimator', 'coreset', "Core-set: k-center greedy on the classifier's features, covering the subset's gaps."),  # noqa: E501
    ('estimator', 'density', 'kNN density: mean cosine similarity to the k nearest training samples; typical first.'),  # noqa: E501
    ('estimator', 'entropy', 'Predictive entropy of one deterministic pass: most uncertain first.'),
    ('estimator', 'info-density', 'Information density: MC-dropout uncertainty x ((1 + density) / 2) ** density_beta.'),  # noqa: E501
    ('estimator', 'least-confidence', '1 - p_max of one deterministic pass: least confident first.'),  # noqa: E501
    ('estimator', 'margin', '1 - (p1 - p2) of one deterministic pass: smallest top-2 margin first.'),  # noqa: E501
    ('estimator', 'mcdropout', "MC-dropout uncertainty over T draws (BALD by default, the paper's criterion)."),  # noqa: E501
    ('estimator', 'prototype-cosine', "Cosine similarity to the class prototype over the current subset (formerly 'typicality')."),  # noqa: E501
    ('estimator', 'random', 'Uniform random scores, seeded by (seed, step): the no-information baseline.'),  # noqa: E501
    ('estimator', 'typiclust', 'TypiClust (Hacohen et al. 2022): the most typical sample of each uncovered k-means cluster.'),  # noqa: E501
    ('policy', 'adaptive', "The paper's rule: query when validation stops improving, then finish on the full set."),  # noqa: E501
    ('policy', 'balanced', 'The anchors only, never grown: the under-sampling baseline.'),
    ('policy', 'concave', 'Square-root growth, sqrt(t): most of the pool joins early, the last rounds add little.'),  # noqa: E501
    ('policy', 'convex', 'Quadratic growth, t^2: stays near the balanced anchors longer, then fills fast.'),  # noqa: E501
    ('policy', 'exponential', 'Geometric growth: the subset size is multiplied by the same factor every round.'),  # noqa: E501
    ('policy', 'full', 'All training data from the first epoch: the plain long-tailed baseline.'),
    ('policy', 'linear', 'Subset size grows linearly from the anchors (first round) to the full split (last).'),  # noqa: E501
    ('policy', 'plateau', "The authors' query rule (FlexSampling `FlexSamplingTrainer.run`): after a warm-up, query"),  # noqa: E501
    ('policy', 'step', 'A few large jumps: the pool joins in `jumps` equal parts, the last one in the last round.'),  # noqa: E501
    ('allocation', 'balanced', "Equal shares for every class with samples left; a capped class's excess goes to the rest."),  # noqa: E501
    ('allocation', 'difficulty', "Quotas ∝ 1 − validation recall of each class (harder classes get more); the paper's."),  # noqa: E501
    ('allocation', 'proportional', 'Quotas proportional to what each class has left: every class interpolates to full.'),  # noqa: E501
    ('allocation', 'remaining-difficulty', "The authors' quotas: each class's own remaining pool scaled by its relative difficulty."),  # noqa: E501
    ('anchors', 'prototype', 'Per class, the samples nearest to the class prototype in feature space.'),  # noqa: E501
    ('anchors', 'random', 'Per class, a seeded random draw of the anchor count (the ablation of `prototype`).'),  # noqa: E501
    ('dataset', 'datalist', 'Images listed in a CSV or JSON file (MONAI datalist, ISIC ground-truth CSV).'),  # noqa: E501
    ('dataset', 'digits-lt', 'Handwritten digits (1797 real 8x8 images), 10 classes, embedded; no download.'),  # noqa: E501
    ('dataset', 'imagefolder', "A folder of one's own images: class folders or train/val/test folders, used as given."),  # noqa: E501
    ('dataset', 'isic-archive14', 'ISIC archive, 14 classes, one long-tailed split (val/test keep the imbalance).'),  # noqa: E501
    ('dataset', 'isic2019', 'ISIC 2019, 8 classes, long-tailed train (r = 100/200/500 official), balanced val/test.'),  # noqa: E501
    ('dataset', 'synthetic-lt', 'Generated long-tailed RGB images; counts from a profile (ISIC-like or exponential).'),  # noqa: E501
    ('loss', 'balanced-softmax', 'Balanced softmax (Ren et al., NeurIPS 2020): cross-entropy on logits + log prior.'),  # noqa: E501
    ('loss', 'cb-focal', 'Softmax focal loss (`focal_gamma`) weighted by the inverse effective number (`cb_beta`).'),  # noqa: E501
    ('loss', 'cb-softmax', 'Softmax cross-entropy weighted per class by the inverse effective number (`cb_beta`).'),  # noqa: E501
    ('loss', 'ce', 'Plain softmax cross-entropy.'),
    ('loss', 'focal', 'Softmax focal loss (Lin et al.): down-weights easy samples by (1 − p_t)^focal_gamma.'),  # noqa: E501
    ('loss', 'grw', 'Generalised re-weighting (Zhang et al., Distribution Alignment, CVPR 2021).'),
    ('loss', 'ldam', 'LDAM (Cao et al., NeurIPS 2019) with deferred re-weighting (DRW).'),
    ('sampler', 'class-aware', "The authors' class-aware sampler (FlexSampling `ClassAwareSampler`, after OLTR): as many"),  # noqa: E501
    ('sampler', 'class-balanced', 'Every class equally likely per draw (re-sampling, RS), as many draws as samples.'),  # noqa: E501
    ('sampler', 'instance', 'Every sample once per epoch, shuffled.'),
    ('sampler', 'sqrt', 'Classes drawn ∝ sqrt(n_c): halfway between instance and class-balanced sampling.'),  # noqa: E501
    ('tracker', 'csv', 'Plain CSV files, one row per event, each written and flushed at once (a killed run keeps'),  # noqa: E501
    ('tracker', 'mlflow', 'An MLflow run (MlflowClient, no global active run): params, metrics by epoch, the chosen'),  # noqa: E501
    ('tracker', 'tensorboard', "torch's SummaryWriter: scalars, histograms, the config as text and as HParams."),  # noqa: E501
    ('tracker', 'wandb', "A W&B run (project WANDB_PROJECT or 'flexsample', group = the bench): config, metrics"),  # noqa: E501
    ('launcher', 'local', '`--launcher local` (the default): `jobs` cells at a time on this machine.'),  # noqa: E501
    ('launcher', 'ray', 'Cells as Ray tasks; `slots` is None, so the whole grid is submitted at once and Ray'),  # noqa: E501
    ('launcher', 'slurm', 'The grid as one submitit job array; see the module docstring.'),
    ('recipe', 'paper', "Flexible Sampling as the authors' trainer runs it (see `flexsample list recipe`)."),  # noqa: E501
    ('recipe', 'paper-control', "The paper recipe's training on the full set from the first epoch (the authors' control)."),  # noqa: E501
)
# (kind, component, option, type, default, accepted, help) per built-in option
OPTIONS: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ('estimator', 'badge', 'badge_memory', 'int', 'None', 'an integer, 0 < x', 'bytes the gradient embeddings may take (default: a share of free memory)'),  # noqa: E501
    ('estimator', 'badge', 'badge_seeding', 'str', "'authors'", 'one of: authors, greedy', "k-means++ seeding: authors (largest gradient, then D^2 sampling, as JordanAsh/badge) or greedy (scikit-learn's kmeans_plusplus)"),  # noqa: E501
    ('estimator', 'badge', 'badge_bias', 'bool', 'False', 'true or false', "append the head bias's gradient columns to the embedding (the authors do not)"),  # noqa: E501
    ('estimator', 'batchbald', 'mc_samples', 'int', '20', 'an integer, 2 <= x <= 10000', 'MC-dropout draws T'),  # noqa: E501
    ('estimator', 'batchbald', 'mc_mode', 'str', "'head'", 'one of: head, full', 'MC-dropout mode: head (backbone once) or full (T complete passes)'),  # noqa: E501
    ('estimator', 'batchbald', 'batchbald_samples', 'int', '10000', 'an integer, 100 <= x <= 10000000', 'sampled joint configurations once exact joint entropies no longer fit'),  # noqa: E501
    ('estimator', 'batchbald', 'batchbald_max_draws', 'int', '50000', 'an integer, 1 <= x', "candidates x MC draws of one class beyond which the class falls back to power BALD (a greedy pick's cost grows with it)"),  # noqa: E501
    ('estimator', 'density', 'knn', 'int', '10', 'an integer, 1 <= x <= 10000', 'neighbours k of the kNN search'),  # noqa: E501
    ('estimator', 'density', 'ivf_threshold', 'int', '200000', 'an integer, 1 <= x <= 1000000000', 'use an IVF index above this many samples'),  # noqa: E501
    ('estimator', 'info-density', 'mc_samples', 'int', '20', 'an integer, 2 <= x <= 10000', 'MC-dropout draws T'),  # noqa: E501
    ('estimator', 'info-density', 'mc_score', 'str', "'bald'", 'one of: bald, entropy, variation-ratio, std', 'MC-dropout score: bald, entropy, variation-ratio or std'),  # noqa: E501
    ('estimator', 'info-density', 'mc_mode', 'str', "'head'", 'one of: head, full', 'MC-dropout mode: head (backbone once) or full (T complete passes)'),  # noqa: E501
    ('estimator', 'info-density', 'knn', 'int', '10', 'an integer, 1 <= x <= 10000', 'neighbours k of the kNN search'),  # noqa: E501
    ('estimator', 'info-density', 'density_beta', 'float', '1.0', 'a finite number, 0 <= x <= 100', 'exponent of the density term'),  # noqa: E501
    ('estimator', 'info-density', 'ivf_threshold', 'int', '200000', 'an integer, 1 <= x <= 1000000000', 'use an IVF index above this many samples'),  # noqa: E501
    ('estimator', 'mcdropout', 'mc_samples', 'int', '20', 'an integer, 2 <= x <= 10000', 'MC-dropout draws T'),  # noqa: E501
    ('estimator', 'mcdropout', 'mc_score', 'str', "'bald'", 'one of: bald, entropy, variation-ratio, std', 'MC-dropout score: bald, entropy, variation-ratio or std'),  # noqa: E501
    ('estimator', 'mcdropout', 'mc_mode', 'str', "'head'", 'one of: head, full', 'MC-dropout mode: head (backbone once) or full (T complete passes)'),  # noqa: E501
    ('estimator', 'typiclust', 'knn', 'int', '20', 'an integer, 1 <= x <= 10000', 'neighbours k of the kNN search'),  # noqa: E501
    ('estimator', 'typiclust', 'max_clusters', 'int', '500', 'an integer, 1 <= x <= 1000000', 'cap on the number of clusters (|L| + B)'),  # noqa: E501
    ('estimator', 'typiclust', 'ivf_threshold', 'int', '200000', 'an integer, 1 <= x <= 1000000000', 'use an IVF index above this many samples'),  # noqa: E501
    ('estimator', 'typiclust', 'min_cluster_size', 'int', '5', 'an integer, 0 <= x <= 1000000', "clusters of this many points or fewer are visited only when no larger one has a candidate left (the authors' code: 5; 0 keeps all)"),  # noqa: E501
    ('estimator', 'typiclust', 'knn_rule', 'str', "'half'", 'one of: half, all', "neighbours K among a cluster's m candidates: half = min(knn, m // 2) (the authors' code) or all = min(knn, m - 1) (the paper's text)"),  # noqa: E501
    ('estimator', 'typiclust', 'order', 'str', "'static'", 'one of: static, greedy', "cluster order: static = ranked once (fewest labelled, largest) and visited in turn (the authors' code) or greedy = re-ranked after each pick"),  # noqa: E501
    ('estimator', 'typiclust', 'distance', 'str', "'squared'", 'one of: squared, euclidean', "typicality's distance: squared (mean squared distance, the authors' code) or euclidean (the paper's formula)"),  # noqa: E501
    ('policy', 'adaptive', 'patience', 'int', '3', 'an integer, 1 <= x <= 100000', 'epochs without improvement before a query'),  # noqa: E501
    ('policy', 'adaptive', 'query_ratio', 'float', '0.25', 'a finite number, 0 < x <= 1', 'fraction of the remaining pool added per query'),  # noqa: E501
    ('policy', 'plateau', 'warmup_fraction', 'float', '0.16666666666666666', 'a finite number, 0 <= x <= 1', 'warm-up on the anchors, as a fraction of the epoch budget'),  # noqa: E501
    ('policy', 'plateau', 'patience_fraction', 'float', '0.058333333333333334', 'a finite number, 0 <= x <= 1', 'epochs without improvement before a query, as a fraction of the epoch budget (at least 1 epoch)'),  # noqa: E501
    ('policy', 'plateau', 'interval_fraction', 'float', '0.041666666666666664', 'a finite number, 0 <= x <= 1', 'epochs after the last query that force the next one, as a fraction of the epoch budget (0: off; else at least 1 epoch)'),  # noqa: E501
    ('policy', 'plateau', 'query_fraction', 'float', '0.1', 'a finite number, 0 < x <= 1', 'q: a step adds sum_c min(pool_c, max(1, floor(pool_c q p_c)))'),  # noqa: E501
    ('policy', 'plateau', 'fill_last', 'bool', 'False', 'true or false', 'whether the rest of the pool joins at the start of the last round'),  # noqa: E501
    ('policy', 'step', 'jumps', 'int', '3', 'an integer, 1 <= x <= 100000', 'number of jumps'),
    ('allocation', 'difficulty', 'difficulty_floor', 'float', '0.05', 'a finite number, 0 <= x <= 1', 'weight floor, as a fraction of the mean weight'),  # noqa: E501
    ('allocation', 'remaining-difficulty', 'query_fraction', 'float', '0.1', 'a finite number, 0 < x <= 1', "q: a class's quota is about q x its remaining pool x p_c"),  # noqa: E501
    ('anchors', 'prototype', 'anchor_scaling', 'float', '0.1', 'a finite number, 0 < x <= 1', 'anchor imbalance compression s: anchors keep ratio r*s'),  # noqa: E501
    ('anchors', 'prototype', 'anchor_floor', 'int', '2', 'an integer, 1 <= x <= 1000000', 'minimum anchors per class'),  # noqa: E501
    ('anchors', 'prototype', 'anchor_features', 'str', "'auto'", 'one of: auto, pixels, pretrained, ssl', 'features the prototypes are computed in: auto, pixels, pretrained or ssl (the run computes them; auto: pixels for tiny images, else pretrained when --pretrained is given, else ssl)'),  # noqa: E501
    ('anchors', 'prototype', 'distance', 'str', "'cosine'", 'one of: cosine, euclidean', "how samples rank against the class prototype: cosine (to the mean of the L2-normalised features) or euclidean (to the mean of the raw features, the authors' code)"),  # noqa: E501
    ('anchors', 'random', 'anchor_scaling', 'float', '0.1', 'a finite number, 0 < x <= 1', 'anchor imbalance compression s: anchors keep ratio r*s'),  # noqa: E501
    ('anchors', 'random', 'anchor_floor', 'int', '2', 'an integer, 1 <= x <= 1000000', 'minimum anchors per class'),  # noqa: E501
    ('dataset', 'datalist', 'datalist', 'str', 'None', 'a string', 'CSV or JSON file listing image path, label and (optionally) split'),  # noqa: E501
    ('dataset', 'datalist', 'data_dir', 'str', 'None', 'a string', "folder holding the dataset's images"),  # noqa: E501
    ('dataset', 'datalist', 'imbalance_ratio', 'float', 'None', 'a finite number, 1 <= x <= 1000000', "resample the training split to imbalance ratio r = n_max / n_min (default: keep the data's own distribution and use every training image)"),  # noqa: E501
    ('dataset', 'datalist', 'data_seed', 'int', '0', 'an integer, 0 <= x <= 4294967295', 'seed of the data split (not of training)'),  # noqa: E501
    ('dataset', 'datalist', 'image_size', 'int', 'None', 'an integer, 4 <= x <= 4096', "input resolution (default: the dataset's)"),  # noqa: E501
    ('dataset', 'datalist', 'skip_missing', 'bool', 'False', 'true or false', 'skip images listed but absent or unreadable'),  # noqa: E501
    ('dataset', 'datalist', 'val_per_class', 'int', 'None', 'an integer, 1 <= x', 'validation images per class when val is carved from training (default: as many as fit)'),  # noqa: E501
    ('dataset', 'datalist', 'test_per_class', 'int', 'None', 'an integer, 1 <= x', 'test images per class when test is carved from training (default: as many as fit)'),  # noqa: E501
    ('dataset', 'digits-lt', 'imbalance_ratio', 'float', '100.0', 'a finite number, 1 <= x <= 1000000', 'imbalance ratio r = n_max / n_min (ISIC: the official split 100, 200 or 500)'),  # noqa: E501
    ('dataset', 'digits-lt', 'data_seed', 'int', '0', 'an integer, 0 <= x <= 4294967295', 'seed of the data split (not of training)'),  # noqa: E501
    ('dataset', 'digits-lt', 'image_size', 'int', 'None', 'an integer, 4 <= x <= 4096', "input resolution (default: the dataset's)"),  # noqa: E501
    ('dataset', 'imagefolder', 'data_dir', 'str', 'None', 'a string', "folder holding the dataset's images"),  # noqa: E501
    ('dataset', 'imagefolder', 'imbalance_ratio', 'float', 'None', 'a finite number, 1 <= x <= 1000000', "resample the training split to imbalance ratio r = n_max / n_min (default: keep the data's own distribution and use every training image)"),  # noqa: E501
    ('dataset', 'imagefolder', 'data_seed', 'int', '0', 'an integer, 0 <= x <= 4294967295', 'seed of the data split (not of training)'),  # noqa: E501
    ('dataset', 'imagefolder', 'image_size', 'int', 'None', 'an integer, 4 <= x <= 4096', "input resolution (default: the dataset's)"),  # noqa: E501
    ('dataset', 'imagefolder', 'skip_missing', 'bool', 'False', 'true or false', 'skip images listed but absent or unreadable'),  # noqa: E501
    ('dataset', 'imagefolder', 'val_per_class', 'int', 'None', 'an integer, 1 <= x', 'validation images per class when val is carved from training (default: as many as fit)'),  # noqa: E501
    ('dataset', 'imagefolder', 'test_per_class', 'int', 'None', 'an integer, 1 <= x', 'test images per class when test is carved from training (default: as many as fit)'),  # noqa: E501
    ('dataset', 'isic-archive14', 'data_dir', 'str', 'None', 'a string', "folder holding the dataset's images"),  # noqa: E501
    ('dataset', 'isic-archive14', 'splits_dir', 'str', 'None', 'a string', 'folder holding split manifests (default: data dir)'),  # noqa: E501
    ('dataset', 'isic-archive14', 'image_size', 'int', 'None', 'an integer, 4 <= x <= 4096', "input resolution (default: the dataset's)"),  # noqa: E501
    ('dataset', 'isic-archive14', 'skip_missing', 'bool', 'False', 'true or false', 'skip images listed but absent or unreadable'),  # noqa: E501
    ('dataset', 'isic2019', 'imbalance_ratio', 'float', '100.0', 'a finite number, 1 <= x <= 1000000', 'imbalance ratio r = n_max / n_min (ISIC: the official split 100, 200 or 500)'),  # noqa: E501
    ('dataset', 'isic2019', 'data_dir', 'str', 'None', 'a string', "folder holding the dataset's images"),  # noqa: E501
    ('dataset', 'isic2019', 'splits_dir', 'str', 'None', 'a string', 'folder holding split manifests (default: data dir)'),  # noqa: E501
    ('dataset', 'isic2019', 'image_size', 'int', 'None', 'an integer, 4 <= x <= 4096', "input resolution (default: the dataset's)"),  # noqa: E501
    ('dataset', 'isic2019', 'skip_missing', 'bool', 'False', 'true or false', 'skip images listed but absent or unreadable'),  # noqa: E501
    ('dataset', 'synthetic-lt', 'profile', 'str', 'None', 'a string', 'class counts: isic2019, isic2019-r100, isic2019-r200, isic2019-r500, isic14, exponential'),  # noqa: E501
    ('dataset', 'synthetic-lt', 'imbalance_ratio', 'float', '100.0', 'a finite number, 1 <= x <= 1000000', 'imbalance ratio r = n_max / n_min (ISIC: the official split 100, 200 or 500)'),  # noqa: E501
    ('dataset', 'synthetic-lt', 'data_seed', 'int', '0', 'an integer, 0 <= x <= 4294967295', 'seed of the data split (not of training)'),  # noqa: E501
    ('dataset', 'synthetic-lt', 'image_size', 'int', 'None', 'an integer, 4 <= x <= 4096', "input resolution (default: the dataset's)"),  # noqa: E501
    ('dataset', 'synthetic-lt', 'num_classes', 'int', 'None', 'an integer, 2 <= x <= 10000', 'number of classes (exponential profile)'),  # noqa: E501
    ('loss', 'cb-focal', 'cb_beta', 'float', '0.9999', 'a finite number, 0 <= x < 1', 'class-balanced losses: effective-number beta'),  # noqa: E501
    ('loss', 'cb-focal', 'focal_gamma', 'float', '2.0', 'a finite number, 0 <= x <= 100', 'focal losses: gamma'),  # noqa: E501
    ('loss', 'cb-softmax', 'cb_beta', 'float', '0.9999', 'a finite number, 0 <= x < 1', 'class-balanced losses: effective-number beta'),  # noqa: E501
    ('loss', 'focal', 'focal_gamma', 'float', '2.0', 'a finite number, 0 <= x <= 100', 'focal losses: gamma'),  # noqa: E501
    ('loss', 'grw', 'grw_exponent', 'float', '1.2', 'a finite number, 0 <= x <= 10', 'exponent of the inverse-frequency weights'),  # noqa: E501
    ('loss', 'ldam', 'ldam_max_margin', 'float', '0.5', 'a finite number, 0 < x <= 100', 'largest margin'),  # noqa: E501
    ('loss', 'ldam', 'ldam_scale', 'float', '30.0', 'a finite number, 0 < x <= 1000', 'logit scale'),  # noqa: E501
    ('loss', 'ldam', 'drw_start', 'float', '0.8', 'a finite number, 0 <= x <= 1', 'fraction of the epoch budget before re-weighting'),  # noqa: E501
    ('loss', 'ldam', 'cb_beta', 'float', '0.9999', 'a finite number, 0 <= x < 1', 'class-balanced losses: effective-number beta'),  # noqa: E501
    ('tracker', 'mlflow', 'experiment', 'str', 'None', 'a string', "MLflow experiment [default: the bench's name for bench cells, else MLFLOW_EXPERIMENT_NAME, else 'flexsample']"),  # noqa: E501
    ('tracker', 'wandb', 'project', 'str', 'None', 'a string', "W&B project [default: WANDB_PROJECT, else 'flexsample']"),  # noqa: E501
    ('launcher', 'local', 'jobs', 'int', '1', 'an integer, 1 <= x', 'cells at once; with G GPUs each cell gets its own GPU (jobs <= G x cells_per_gpu), and the cores are split between the cells'),  # noqa: E501
    ('launcher', 'local', 'cells_per_gpu', 'int', '1', 'an integer, 1 <= x', 'cells sharing one GPU'),  # noqa: E501
    ('launcher', 'local', 'cpus_per_cell', 'int', 'None', 'an integer, 1 <= x', 'threads (CPU cores) per cell [default: cores / jobs]'),  # noqa: E501
    ('launcher', 'ray', 'address', 'str', 'None', 'a string', 'the cluster, auto or ray://HOST:PORT [default: RAY_ADDRESS, else a new local runtime]'),  # noqa: E501
    ('launcher', 'ray', 'gpus_per_cell', 'float', '0.0', 'a finite number, 0 <= x', 'GPUs per cell, a fraction such as 0.5 shares one, 0 = the cell sees no GPU'),  # noqa: E501
    ('launcher', 'ray', 'cpus_per_cell', 'int', 'None', 'an integer, 1 <= x', 'threads (CPU cores) per cell [default: 1]'),  # noqa: E501
    ('launcher', 'ray', 'num_cpus', 'int', 'None', 'an integer, 1 <= x', "a local runtime's CPUs [default: this machine's cores]"),  # noqa: E501
    ('launcher', 'slurm', 'partition', 'str', 'None', 'a string', 'the partition'),
    ('launcher', 'slurm', 'gpus_per_cell', 'float', '0.0', 'a finite number, 0 <= x', 'whole GPUs per cell'),  # noqa: E501
    ('launcher', 'slurm', 'cpus_per_cell', 'int', 'None', 'an integer, 1 <= x', 'CPUs (and torch threads) per cell [default: 1]'),  # noqa: E501
    ('launcher', 'slurm', 'time', 'str', 'None', 'a string', 'time limit per cell, HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00, 1-12:00:00) (required on Slurm)'),  # noqa: E501
    ('launcher', 'slurm', 'array_parallelism', 'int', 'None', 'an integer, 1 <= x', 'at most this many array tasks at once'),  # noqa: E501
    ('launcher', 'slurm', 'extra', 'str', 'None', '', 'extra sbatch parameters, KEY -> VALUE'),
    ('launcher', 'slurm', 'wait', 'bool', 'True', 'true or false', 'wait for the array; False returns after submitting'),  # noqa: E501
    ('launcher', 'slurm', 'cluster', 'str', 'None', 'a string', 'slurm or local [default: FLEXSAMPLE_SLURM_CLUSTER, else slurm]'),  # noqa: E501
    ('launcher', 'slurm', 'name', 'str', "'flexsample-bench'", 'a string', 'the job name'),
    ('recipe', 'paper', 'pretrained', 'bool', 'True', 'true or false', "on ISIC, start from the authors' ImageNet weights (timm's resnet50, downloaded once into the Hugging Face cache)"),  # noqa: E501
    ('recipe', 'paper-control', 'pretrained', 'bool', 'True', 'true or false', "on ISIC, start from the authors' ImageNet weights (timm's resnet50, downloaded once into the Hugging Face cache)"),  # noqa: E501
)
# --- end generated ---

# run options with a fixed set of choices (not registries), listed after the components;
# tests/test_startup.py checks their names against the config's accepted values
CHOICES: tuple[tuple[str, str, str], ...] = (
    ("acquisition", "topk", "The quota's best scores in each class (the default)."),
    ("acquisition", "power", "Stochastic batch (Kirsch et al. 2023): drawn with probability ∝ score^beta."),  # noqa: E501
    ("acquisition", "softmax", "Stochastic batch: drawn with probability ∝ exp(beta · score)."),
    ("acquisition", "softrank", "Stochastic batch: drawn with probability ∝ rank^-beta within the class."),  # noqa: E501
    ("mc-source", "dropout", "MC draws are T dropout masks on the current model (--mc-samples T)."),
    ("mc-source", "snapshots", "MC draws are the best weights of the last --snapshots rounds (an ensemble)."),  # noqa: E501
    ("decouple", "crt", "Second stage: the classifier re-trained class-balanced on frozen features."),  # noqa: E501
    ("decouple", "lws", "Second stage: a learned per-class scale of the classifier's logits."),
    ("decouple", "tau-norm", "Second stage: classifier weights over their norm^tau, tau chosen on validation."),  # noqa: E501
)


def registries() -> list[Any]:
    """The ten registries, built-ins loaded (this imports torch)."""
    from flexsample.datasets.base import DATASETS
    from flexsample.engine.registry import (
        ALLOCATIONS,
        ANCHORS,
        ESTIMATORS,
        LAUNCHERS,
        POLICIES,
        TRACKERS,
    )
    from flexsample.training.losses import LOSSES
    from flexsample.training.samplers import SAMPLERS
    from flexsample.workflows.recipes import RECIPES

    regs = [
        ESTIMATORS, POLICIES, ALLOCATIONS, ANCHORS, DATASETS, LOSSES, SAMPLERS, TRACKERS,
        LAUNCHERS, RECIPES,
    ]
    for reg in regs:  # the classes themselves, not the manifest made from them
        reg._load()
    return regs


# modules whose import registers built-ins (and, through them, any plugin that loaded)
REGISTERING = (
    "flexsample.estimators",
    "flexsample.policies",
    "flexsample.datasets.builtin",
    "flexsample.training.losses",
    "flexsample.training.samplers",
    "flexsample.integrations.trackers",
    "flexsample.workflows.recipes",
    # not flexsample.workflows.launchers: the bench command imports it at start-up; a
    # launcher plugin comes through its entry point (GROUPS) or --plugin, which list checks
)


def needs_registries() -> bool:
    """Whether the registries themselves must answer: an installed package declares an entry
    point in one of `GROUPS` (found as the registries find them), or the built-ins were
    imported already in this process (a plugin may have registered next to them)."""
    from flexsample.engine import registry

    if any(module in sys.modules for module in REGISTERING):
        return True
    return any(registry.entry_points(group=group) for group in GROUPS)


def render() -> str:
    """The generated part of this file, from the registries."""
    lines = ["BUILTINS: tuple[tuple[str, str, str], ...] = ("]
    for reg in registries():
        for name, doc, _origin in reg.describe():
            line = f"    ({reg.kind!r}, {name!r}, {doc!r}),"
            lines.append(line if len(line) <= 100 else line + "  # noqa: E501")
    lines.append(")")
    lines.append("# (kind, component, option, type, default, accepted, help) per built-in option")
    lines.append("OPTIONS: tuple[tuple[str, str, str, str, str, str, str], ...] = (")
    for row in option_rows():
        line = f"    {row!r},"
        lines.append(line if len(line) <= 100 else line + "  # noqa: E501")
    lines.append(")")
    return "\n".join(lines)


OptionRow = tuple[str, str, str, str, str, str, str]


def option_rows(registries_: list[Any] | None = None) -> list[OptionRow]:
    """(kind, component, option, type, default, accepted, help) for every registered
    component's options, from the registries."""
    from flexsample.engine.options import option_rows as rows_of

    out = []
    for reg in registries_ or registries():
        for name in reg.names():
            model = reg.options(name)
            for (option, default, accepted, help_), info in zip(
                rows_of(model), model.model_fields.values(), strict=True
            ):
                out.append((reg.kind, name, option, type_name(info.annotation), default,
                            accepted, help_))
    return out


def type_name(annotation: Any) -> str:
    """'int', 'float', 'bool' or 'str': how the command line parses an option's value."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) is not typing.Literal and args else annotation
    for t in (bool, int, float):
        if base is t:
            return t.__name__
    return "str"


def manifest_path() -> Path:
    """flexsample/_manifest.py of the package this module belongs to."""
    import flexsample

    return Path(flexsample.__file__).resolve().parent / "_manifest.py"

MANIFEST_HEAD = '''"""The built-in components' names, deprecated aliases and options, as data.

Generated by `python -m flexsample.cli.catalogue` (CI checks it is current): do not edit.
`engine.registry.Registry` answers `names`, `resolve` and `options` from it while its
built-ins are not imported and no installed package adds to its group, so a configuration is
checked (names, options, ranges) before torch is imported. Each option is (name, annotation
as Python source, default, ge/gt/le/lt, help).
"""

from typing import Any

MANIFEST: dict[str, dict[str, Any]] = '''


def type_source(annotation: Any) -> str:
    """Python source of an option's annotation, for the manifest; the few types options
    use (a new one is refused here, so the manifest cannot hold a type it cannot rebuild)."""
    import collections.abc
    import types
    import typing

    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "None"
    if annotation in (int, float, bool, str):
        return annotation.__name__
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in typing.get_args(annotation)) + "]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_source(a) for a in typing.get_args(annotation))
    if origin is collections.abc.Mapping:
        key, value = typing.get_args(annotation)
        return f"Mapping[{type_source(key)}, {type_source(value)}]"
    raise TypeError(f"the manifest cannot hold option type {annotation!r}: add it to type_source")


def render_manifest() -> str:
    """flexsample/_manifest.py, from the registries (each option checked to rebuild the same
    pydantic model from its manifest row)."""
    import pprint

    from flexsample.engine.registry import manifest_model

    manifest: dict[str, dict[str, Any]] = {}
    for reg in registries():
        options: dict[str, tuple[Any, ...]] = {}
        for name in reg.names():
            model = reg.options(name)
            rows = tuple(
                (key, type_source(info.annotation), info.default, _limits(info),
                 info.description or "")
                for key, info in model.model_fields.items()
            )
            rebuilt = manifest_model(reg.kind, name, rows)
            if _schema(rebuilt) != _schema(model):
                raise TypeError(f"{reg.kind} '{name}': options do not rebuild from the manifest")
            options[name] = rows
        aliases = {old: reg._aliases[old] for old in sorted(reg._aliases)}
        manifest[reg.group] = {"aliases": aliases, "options": options}
    body = pprint.pformat(manifest, width=100, sort_dicts=False)
    return MANIFEST_HEAD + body + "\n"


_CONSTRAINTS = ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length", "pattern")


def _limits(info: Any) -> dict[str, Any]:
    """A field's constraints (bounds, lengths, pattern), as keyword arguments of Field."""
    out: dict[str, Any] = {}
    for meta in info.metadata:
        for key in _CONSTRAINTS:
            value = getattr(meta, key, None)
            if value is not None:
                out[key] = value
    if info.json_schema_extra:  # e.g. opt(..., path="folder")
        out["json_schema_extra"] = info.json_schema_extra
    return out


def _schema(model: Any) -> Any:
    """A model's JSON schema without its title (the manifest's model has another name)."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


def regenerate(path: Path = Path(__file__)) -> None:
    """Rewrite the BUILTINS and OPTIONS tables of this file, and flexsample/_manifest.py,
    from the registries."""
    manifest_path().write_text(render_manifest(), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    head, rest = text.split("# --- generated: python -m flexsample.cli.catalogue ---\n", 1)
    _, tail = rest.split("# --- end generated ---\n", 1)
    path.write_text(
        f"{head}# --- generated: python -m flexsample.cli.catalogue ---\n{render()}\n"
        f"# --- end generated ---\n{tail}",
        encoding="utf-8",
    )


def is_current(path: Path = Path(__file__)) -> bool:
    """Whether the generated tables of this file, and the manifest, equal what the
    registries describe now."""
    if manifest_path().read_text(encoding="utf-8") != render_manifest():
        return False
    text = path.read_text(encoding="utf-8")
    _, rest = text.split("# --- generated: python -m flexsample.cli.catalogue ---\n", 1)
    table, _ = rest.split("# --- end generated ---\n", 1)
    return table == render() + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:  # the pre-commit hook and CI: fail when stale
        if not is_current():
            print(
                "cli/catalogue.py or flexsample/_manifest.py is stale: a built-in component or its "
                "options changed; run "
                "python -m flexsample.cli.catalogue",
                file=sys.stderr,
            )
            sys.exit(1)
    else:
        regenerate()

"""Data-scaling study: model size and family against training-set size (ViT paper, Figs. 3/4).

  python -m vit_jax.sweep --config=configs/data_scaling.py:digits --workdir=/tmp/scaling_digits \
      --max_parallel=2

Every point trains one model on one nested, class-balanced subset of the training split, holds
out 10% of the subset (class-balanced) for early stopping and reports test and few-shot
accuracy at the best validation step. The study presets (digits, mnist, cifar10) follow the
protocol of a careful scaling study:
- budget rule: a point's steps follow its subset size (`budget.epochs` passes, clipped to
  [`budget.min_steps`, `budget.max_steps`]), early stopping after `base.eval.patience`
  evaluations without a better validation accuracy; a fixed number of steps for every size
  would over-train small subsets and cut large ones off after a fraction of an epoch;
- seeds: every point runs `seeds` times, `small_seeds` times up to `small_size` images (where
  the variance is); initialisation and data order vary, the subset too with `vary_subset`;
- learning rate and weight decay per family chosen on a small grid at `grid.size` by
  validation accuracy, never test (run by the same command, first);
- convergence check: the smallest and largest sizes rerun with twice the budget; the report
  states the difference (target under one point) and says when the budget is too small.
The sweep writes `results.csv` (one row per run, with its seed, role, learning rate and budget),
figures with error bars and `REPORT.md` into its workdir; rerunning skips finished runs, so a
long study can run over several sittings.

Presets:
  digits       the Quickstart: embedded 8x8 digits; ResNet vs ViT depth 4 and 8 on 150 / 400 /
               1,000 / 1,438 (all) images, 2 seeds (3 at 150 images), 15 epochs clipped to
               100..250 steps of batch 64, early stopping: 27 points, about 4,300 steps before
               early stopping. 6 min 29 s on 2 idle CPU cores with --max_parallel=2 (measured
               2026-12-04 from a fresh clone; 9 min 8 s one point at a time).
  smoke        seconds, for the tests.
  mnist        the first CPU study (experiments/data_scaling/mnist): MNIST at 16 px;
               BiT ResNet R14x0.25, a hybrid (R8 stem + 12 layers) and ViT at 12, 24 and 36
               layers (width 32, patch 4) on 200 / 500 / 1,000 / 2,000 / 5,000 / 10,000
               images (50x), 2 seeds (3 up to 1,000 images), an lr x weight-decay grid at 2,000
               images, 30 epochs clipped to 1,000..3,000 steps of batch 64, 6 evaluations,
               patience 3, convergence check; 103 points. The budget comes from pilots at
               2,500 images: 10 epochs left the transformers far from converged (hybrid 68%,
               ViT-12 53% test accuracy, still rising), 30 epochs reached 93% and 91%; and
               from a first run with a 300-step floor, whose hybrid under-fitted the small
               subsets (500 images: 33-45% test accuracy, training loss still 1.4 at the last
               step; fewer than 1,000 steps never fitted any subset). 3 hours 50 minutes
               on 2 CPU cores with --max_parallel=2 (measured 2026-12-04 over two sittings:
               the grid 28.6 minutes, the 75 study runs and 10 reruns 3 h 22 min; 162,000
               steps). Its convergence check failed for three of ten reruns
               (experiments/data_scaling/mnist): hence mnist_fixed_val.
  mnist_fixed_val  the CPU study's second protocol, after the first's convergence check
               failed (experiments/data_scaling/mnist): the same models, sizes and seeds, but early
               stopping on a fixed validation set of 1,000 training images (100 per class) held out
               of the split outside every subset, so that it no longer picks on 20-100 held-out
               images and every subset trains whole; 30 epochs, at least 2,000 steps (the cap,
               8,000, binds no size; the first protocol's twice-the-budget reruns gained 4.9 and 4.3
               points for ViT-12 and ViT-36 at 200 images, 1.9 for ViT-24 at 10,000, whose cap of
               3,000 steps was 21 epochs); the grid at weight decay 0.05 only (the first grid found
               0.05 and 0.3 within its noise for every family). Amended after its grid and 38 runs,
               for the transformers: weight decay 0.3 and a floor of 4,000 steps for the ViTs, 8,000
               for the hybrid (their grid reruns with these), after budget probes (seed 0, test %,
               200 images unless said): at weight decay 0.05 ViT-12 gains about 2 points per
               doubling (88.6 / 90.6 / 92.6 at 2,000 / 4,000 / 8,000 steps) and the hybrid 1.9 (91.4
               / 93.3 at 2,000 / 4,000); at 0.3 ViT-36 gains 3.7 and then nothing (88.8 / 92.4 /
               92.4), ViT-36 on 10,000 images 0.7 (97.8 / 98.5 at 4,688 / 9,376), the hybrid 1.1
               from 4,000 to 8,000 and nothing from 8,000 to 16,000 (93.9 / 95.0 / 95.0). The ResNet
               keeps its runs (0.05 and 2,000 steps: its rerun on 200 images gained 0.7). Measured
               time (2 CPU cores, two runs at once, 2026-12-04/05): 94 runs (9 grid, 75 study,
               10 convergence reruns), 16.8 hours of run time, about 8.5 hours of wall time;
               479,000 training steps. Its convergence check fails for ViT-12 and ViT-24 at
               200 images (+2.0, +2.5 points at 8,000 steps; probes: both converged at 8,000,
               ViT-36 not: +2.1 from 8,000 to 16,000): experiments/data_scaling/mnist_fixed_val.
  mnist_8k     the third protocol, after mnist_fixed_val's convergence check failed for ViT-12
               and ViT-24 at 200 images: the same, but every model trains at least 8,000 steps
               (at every size: 30 epochs of 10,000 images are 4,688), ViT-36 at least 16,000,
               so the ResNet, hybrid, ViT-12 and ViT-24 train exactly 8,000 steps everywhere
               and ViT-36 16,000; the ViT and ResNet grids rerun at 8,000, and at 200 images
               all three seeds rerun with twice the budget (one rerun cannot tell a budget
               effect from seed noise there: ViT-36's seeds spread by 1.3 points). Probes
               behind the floor (seed 0, test % at 4,000 / 8,000 / 16,000 steps, 200 images):
               ViT-12 91.0 / 93.0 / 93.4, ViT-24 90.7 / 93.2 / 92.9, ViT-36 92.4 / 91.5 / 93.6;
               the ResNet at 2,000 / 8,000 steps: 500 images 96.1 / 97.0, 1,000 images 97.0 /
               97.7. First run as `mnist_vit8k` (ViTs only at 8,000); amended when those ResNet
               probes showed its 2,000-step floor cost it the same 0.5 to 1 point the ViTs had
               lost; amended again when ViT-36's three reruns at 200 images gained 1.7 points
               on average from 8,000 to 16,000 steps (91.9 +- 0.5 -> 93.6 +- 0.1; ViT-12 +0.6
               on the same check). The hybrid's runs and ViT-12's and ViT-24's seed-0 runs at
               200 images and their reruns are mnist_fixed_val's runs and probes, ViT-36's study
               runs at 200 images its 16,000-step reruns from before the second amendment (the
               same configs, copied or moved; the sweep refuses a run whose config differs).
               Measured time (2 CPU cores, two runs at once, 2026-12-05/06): 104 runs (9 grid,
               75 study, 20 convergence reruns), 40.5 hours of run time, about 20 hours of wall
               time over several sittings; 1.17 million training steps. Every convergence check
               is under 1 point: experiments/data_scaling/mnist_8k.
  cifar10      the GPU study: CIFAR-10 (cifar10.tar.gz in $VIT_JAX_DATA);
               BiT ResNet R26x0.5, the R8+ViT-Ti/4 hybrid and ViT-Ti/4 at depth 12, 24, 36 on
               1k..50k images (six sizes), 2 seeds up to 2k, 15 epochs clipped to 300..1,500
               steps of batch 256, early stopping. Sized for about 9 minutes on one H200
               (experiments/data_scaling/gpu_study.sh, an estimate until it has run).
  cifar10_cpu  the compute-starved study of experiments/data_scaling/cifar10_400steps (ResNet
               R14x0.25, hybrid and ViT-Micro/4 at depth 2, 4, 8; the same 400 steps of batch
               64 for every size, one seed): kept to reproduce that record, not as a study.
  paper        the ViT paper's study (ViT-B/32, L/16, L/32, b/32, ResNet50x1, ResNet152x2 on
               JFT subsets of 9M / 30M / 90M / 300M); for pods: use --dry_run to list it.

Another image-folder dataset needs only overrides, e.g. the CPU study on any folder of
`train/<class>/*` and `test/<class>/*` images (a directory or .tar.gz):
  python -m vit_jax.sweep --config=configs/data_scaling.py:mnist --workdir=/tmp/study_x \
      --config.base.dataset=folder:/data/other.tar.gz
Images of another size or channel count are resized to base.image_size (channels as stored:
the models take any count); subset sizes above the dataset's size fail alone and are reported.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import cifar10, pretrain
from vit_jax import config as config_lib
from vit_jax import data


def _entry(name: str, lr: float | None = None, **overrides) -> ml_collections.ConfigDict:
  """One model of the sweep: a registry name with overrides, optionally its own learning rate;
  its own weight decay and budget floor (`min_steps`) can be set later (None: the grid's pick
  or the base's weight decay, and budget.min_steps)."""
  return ml_collections.ConfigDict(dict(
      model=config_lib.model_config(name, **overrides),
      lr=placeholder(float) if lr is None else lr, weight_decay=placeholder(float),
      min_steps=placeholder(int)))


def _digits(steps: int, sizes: tuple, models: dict) -> ml_collections.ConfigDict:
  base = config_lib.defaults()
  base.dataset, base.image_size, base.batch_size = 'digits', 8, 64
  base.total_steps = steps
  base.log_every = base.eval_every = max(steps // 4, 1)
  base.checkpoint_every = steps
  base.optim.lr, base.optim.weight_decay = 2e-3, 0.05
  base.schedule.warmup_steps = steps // 10
  base.augment.crop_scale = (0.7, 1.0)
  base.eval.fewshot_shots, base.eval.fewshot_seeds = (1, 5, 10), 3
  return ml_collections.ConfigDict(dict(base=base, models=models, train_sizes=sizes))


MNIST = data.dataset_file('mnist.tar.gz')


def _study(sweep: ml_collections.ConfigDict, *, epochs: float | None = None,
           min_steps: int = 1, max_steps: int = 10**9, evals: int = 1, patience: int = 0,
           seeds: int = 1, small_seeds: int = 1, small_size: int = 0,
           grid_size: int | None = None, grid_lr: tuple = (1e-3,),
           grid_weight_decay: tuple = (0.,), convergence_check: bool = False,
           convergence_seeds: int = 1) -> ml_collections.ConfigDict:
  """Adds the study's fields (budget rule, seeds, grid, convergence check; the defaults keep
  a plain sweep: base.total_steps for every point, one seed, no grid, no check), so every one
  can be overridden on the command line."""
  sweep.budget = ml_collections.ConfigDict(dict(
      epochs=placeholder(float) if epochs is None else float(epochs), min_steps=min_steps,
      max_steps=max_steps, evals=evals))
  sweep.base.eval.patience = patience
  sweep.seeds, sweep.small_seeds, sweep.small_size = seeds, small_seeds, small_size
  sweep.vary_subset = False
  sweep.grid = ml_collections.ConfigDict(dict(
      size=placeholder(int) if grid_size is None else grid_size, lr=grid_lr,
      weight_decay=grid_weight_decay))
  sweep.convergence_check, sweep.convergence_seeds = convergence_check, convergence_seeds
  return sweep


def get_config(preset: str = 'digits') -> ml_collections.ConfigDict:
  """Returns the sweep: `base` (a training config), `models` (label -> entry) and
  `train_sizes` (None = the whole training split)."""
  if preset == 'digits':
    sweep = _study(_digits(250, (150, 400, 1000, 1438), {
        'ResNet': _entry('BiT-R14x0.25-small'),
        'ViT-4': _entry('ViT-Nano_2', num_layers=4),
        'ViT-8': _entry('ViT-Nano_2', num_layers=8),
    }), epochs=15, min_steps=100, max_steps=250, evals=4, patience=2, seeds=2, small_seeds=3,
                   small_size=150)
  elif preset == 'smoke':
    sweep = _digits(4, (60, 120), {
        'ResNet': _entry('BiT-R14x0.25-small'),
        'ViT-1': _entry('ViT-Nano_2', num_layers=1),
    })
    sweep.base.eval.fewshot_shots, sweep.base.eval.fewshot_seeds = (1,), 1
    sweep = _study(sweep, min_steps=4, max_steps=8, evals=2)
  elif preset in ('mnist', 'mnist_fixed_val', 'mnist_8k'):  # later protocols: at the end
    base = config_lib.defaults()
    base.dataset, base.image_size, base.batch_size = f'folder:{MNIST}', 16, 64
    base.total_steps, base.log_every = 3_000, 100
    base.schedule.warmup_steps = 150       # 5% of the steps, scaled with each point's budget
    base.optim.lr, base.optim.weight_decay = 1e-3, 0.05
    base.augment.crop_scale = (0.7, 1.0)
    base.eval.fewshot_shots, base.eval.fewshot_seeds = (1, 5, 10), 3
    vit = dict(hidden_size=32, mlp_dim=128, num_heads=2, patch_size=4)
    models = {
        'ResNet': _entry('BiT-R14x0.25-small'),
        'Hybrid': _entry('R8+ViT-Nano_4-small', num_layers=12, resnet_width=8,
                         **{k: v for k, v in vit.items() if k != 'patch_size'}),
        # Unrolled, not scanned: on CPU a scanned step costs about 1.5x (measured at depth
        # 12 and 36); the points of one model share one compilation (the sweep's cache).
        **{f'ViT-{d}': _entry('ViT-Nano_4', num_layers=d, **vit) for d in (12, 24, 36)},
    }
    sweep = _study(ml_collections.ConfigDict(dict(
        base=base, models=models, train_sizes=(200, 500, 1_000, 2_000, 5_000, 10_000))),
                   epochs=30, min_steps=1_000, max_steps=3_000, evals=6, patience=3, seeds=2,
                   small_seeds=3, small_size=1_000, grid_size=2_000, grid_lr=(1e-3, 2e-3, 4e-3),
                   grid_weight_decay=(0.05, 0.3), convergence_check=True)
  elif preset in ('cifar10', 'cifar10_cpu'):
    cpu = preset == 'cifar10_cpu'
    base = cifar10.get_config('vit,cpu' if cpu else 'vit')
    base.batch_size, base.total_steps = (64, 400) if cpu else (256, 2_500)
    base.log_every = 100
    # Early stopping picks the best of the evaluations; on CPU each one costs about a quarter
    # of the training, so the CPU variant evaluates half-way and at the end only.
    base.eval_every = base.checkpoint_every = base.total_steps // (2 if cpu else 4)
    base.schedule.warmup_steps = base.total_steps // 10
    base.eval.fewshot_seeds = 3
    vit, width = ('ViT-Micro_4', 16) if cpu else ('ViT-Ti_4', 32)
    hybrid = 'R8+ViT-Micro_4-small' if cpu else 'R8+ViT-Ti_4-small'
    depths = (2, 4, 8) if cpu else (12, 24, 36)
    models = {
        'ResNet': _entry('BiT-R14x0.25-small' if cpu else 'BiT-R26x0.5-small'),
        'Hybrid': _entry(hybrid, num_layers=depths[0], resnet_width=width),
        **{f'ViT-{d}': _entry(vit, num_layers=d) for d in depths},
    }
    sizes = (1_000, 2_000, 5_000, 10_000, 50_000) if cpu else (
        1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
    sweep = ml_collections.ConfigDict(dict(base=base, models=models, train_sizes=sizes))
    if cpu:
      sweep = _study(sweep)
    else:
      sweep.base.log_every, sweep.base.schedule.warmup_steps = 50, 75  # 5% of total_steps
      sweep.base.total_steps = 1_500
      sweep = _study(sweep, epochs=15, min_steps=300, max_steps=1_500, evals=6, patience=2,
                     seeds=1, small_seeds=2, small_size=2_000)
  elif preset == 'paper':
    base = pretrain.get_config('B_32,jft')
    models = {
        'ResNet50x1': _entry('BiT-R50x1', lr=1e-3),
        'ResNet152x2': _entry('BiT-R152x2', lr=1e-3),
        'ViT-b/32': _entry('ViT-b_32', lr=pretrain.JFT_LR['B'], representation_size=384),
        'ViT-B/32': _entry('ViT-B_32', lr=pretrain.JFT_LR['B'], representation_size=768),
        'ViT-L/32': _entry('ViT-L_32', lr=pretrain.JFT_LR['L_32'], representation_size=1024),
        'ViT-L/16': _entry('ViT-L_16', lr=pretrain.JFT_LR['L_16'], representation_size=1024),
    }
    sweep = ml_collections.ConfigDict(dict(
        base=base, models=models,
        train_sizes=(9_000_000, 30_000_000, 90_000_000, 300_000_000)))
    sweep = _study(sweep)
  else:
    raise ValueError(f"Unknown data_scaling preset {preset!r}: use 'digits', 'smoke', "
                     "'mnist', 'mnist_fixed_val', 'mnist_8k', 'cifar10', 'cifar10_cpu' or "
                     "'paper'.")
  sweep.base.eval.val_fraction = 0.1
  if preset in ('mnist_fixed_val', 'mnist_8k'):  # see the docstring for why each changes
    sweep.base.eval.val_fraction, sweep.base.eval.val_size = 0.0, 1_000  # one set, outside all
    sweep.budget.min_steps, sweep.budget.max_steps = 2_000, 8_000  # the cap binds no size
    sweep.grid.weight_decay = (0.05,)
    for label, floor in (('Hybrid', 8_000), ('ViT-12', 4_000), ('ViT-24', 4_000),
                         ('ViT-36', 4_000)):  # the amendment: the transformers converge slower
      sweep.models[label].weight_decay, sweep.models[label].min_steps = 0.3, floor
  if preset == 'mnist_8k':  # the third protocol: 8,000 steps, ViT-36 16,000 (second amendment)
    for entry in sweep.models.values():
      entry.min_steps = 8_000
    sweep.models['ViT-36'].min_steps = sweep.budget.max_steps = 16_000
    sweep.convergence_seeds = 3
  sweep.name = preset
  return sweep

"""Draws masked_patch.png from the study's run workdirs (see README.md).

  python experiments/masked_patch/figure.py <runs dir> experiments/masked_patch/masked_patch.png

<runs dir> holds `pretrain/` and any number of `finetune*/` and `scratch*/` workdirs.
Left: the pre-training loss and the colour accuracy of the corrupted patches. Right: the test
accuracy of every fine-tuned and from-scratch run at each of its evaluations.
"""
import glob
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read(workdir: str) -> tuple[list[dict], list[dict]]:
  """(training log lines, evaluation lines) of a run's metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return [m for m in lines if 'loss' in m], [m for m in lines if 'test_accuracy' in m]


def main(runs: str, out: str) -> None:
  fig, (pre_ax, ft_ax) = plt.subplots(1, 2, figsize=(11, 4))
  train, evals = read(os.path.join(runs, 'pretrain'))
  pre_ax.plot([m['step'] for m in train], [m['loss'] for m in train], 'k-', label='train loss')
  acc_ax = pre_ax.twinx()
  acc_ax.plot([m['step'] for m in train], [m['accuracy'] for m in train], 'C2-',
              label='train colour accuracy')
  acc_ax.plot([m['step'] for m in evals], [m['test_accuracy'] for m in evals], 'C2o',
              label='test colour accuracy')
  pre_ax.set(xlabel='step', ylabel='cross-entropy over corrupted patches',
             title='Masked patch prediction on 50k unlabeled images')
  acc_ax.set_ylabel('accuracy (512 colours)')
  acc_ax.legend(loc='center right')
  workdirs = glob.glob(os.path.join(runs, 'finetune*', '')) + glob.glob(
      os.path.join(runs, 'scratch*', ''))
  for workdir in sorted(w.rstrip('/') for w in workdirs):
    name = os.path.basename(workdir)
    colour = 'C0' if name.startswith('finetune') else 'C3'
    _, evals = read(workdir)
    ft_ax.plot([m['step'] for m in evals], [m['test_accuracy'] for m in evals], 'o-',
               color=colour, label=f'{name}: test accuracy')
  ft_ax.set(xlabel='step', ylabel='test accuracy (10 classes)',
            title='1,000 labeled images: pre-trained vs from scratch')
  ft_ax.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=80)


if __name__ == '__main__':
  main(*sys.argv[1:])

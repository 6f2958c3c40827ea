"""Analyses against independent computations, and the analyze command end to end."""
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from numpy_vit import mean_attention_distance, vit_forward
from test_data import write_images
from vit_jax import checkpoint, data, train
from vit_jax import config as config_lib
from vit_jax.analysis import attention, embeddings, fourier, hessian, plots, robustness, run

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs


def test_filter_components_match_the_covariance_eigenvectors():
  kernel = np.random.default_rng(0).normal(size=(4, 4, 3, 40)) * np.linspace(1, 3, 48).reshape(
      4, 4, 3, 1)
  components, ratio = embeddings.filter_components(kernel, 5)
  filters = kernel.reshape(48, 40).T
  eigval, eigvec = np.linalg.eigh(np.cov(filters, rowvar=False))
  order = np.argsort(eigval)[::-1]
  for i in range(5):
    want = eigvec[:, order[i]]
    got = components[i].ravel()
    assert abs(np.dot(got, want)) == pytest.approx(1, abs=1e-8)  # the same axis, either sign
  np.testing.assert_allclose(ratio, eigval[order[:5]] / eigval.sum(), rtol=1e-8)


def test_posemb_similarity_excludes_the_class_token():
  posemb = np.random.default_rng(1).normal(size=(1, 1 + 2 * 3, 8))
  sim = embeddings.posemb_similarity(posemb, (2, 3))
  patches = posemb[0, 1:]
  for a in range(6):
    for b in range(6):
      want = patches[a] @ patches[b] / np.linalg.norm(patches[a]) / np.linalg.norm(patches[b])
      assert sim[a // 3, a % 3, b // 3, b % 3] == pytest.approx(want)


def test_mean_attention_distance_on_a_hand_built_map():
  # A 1x4 grid of 16-px patches plus a class token. Head 0: every patch looks two patches to
  # the right (cyclically): 32 px. Head 1: at itself: 0 px. Half of each row goes to the class
  # token, which is left out and the rest renormalised.
  n = 5
  attn = np.zeros((1, 1, 2, n, n))
  for q in range(4):
    attn[0, 0, 0, 1 + q, 0] = attn[0, 0, 0, 1 + q, 1 + (q + 2) % 4] = 0.5
    attn[0, 0, 1, 1 + q, 0] = attn[0, 0, 1, 1 + q, 1 + q] = 0.5
  attn[0, 0, :, 0, 0] = 1
  np.testing.assert_allclose(attention.mean_attention_distance(attn, (1, 4), 16), [[32, 0]])
  # Uniform attention over a 2x2 grid of 10-px patches: 2 neighbours at 10, 1 at 10*sqrt(2).
  uniform = np.full((3, 2, 4, 4, 4), 0.25)
  want = (2 * 10 + 10 * np.sqrt(2)) / 4
  np.testing.assert_allclose(attention.mean_attention_distance(uniform, (2, 2), 10), want)


def test_attention_rollout_equals_explicit_matrix_products():
  rng = np.random.default_rng(2)
  attn = rng.random((3, 2, 4, 5, 5))
  attn /= attn.sum(-1, keepdims=True)
  maps = attention.attention_rollout(attn, (2, 2))
  for b in range(2):
    layers = []
    for l in range(3):
      a = attn[l, b].mean(0) + np.eye(5)
      layers.append(a / a.sum(-1, keepdims=True))
    joint = np.linalg.multi_dot(layers[::-1])
    want = joint[0, 1:].reshape(2, 2)
    np.testing.assert_allclose(maps[b], want / want.max(), rtol=1e-10)
  patches_only = attn[..., 1:, 1:] / attn[..., 1:, 1:].sum(-1, keepdims=True)
  no_prefix = attention.attention_rollout(patches_only, (2, 2))
  assert no_prefix.shape == (2, 2, 2)
  for b in range(2):  # without a class token: the mean row of the patches
    layers = []
    for l in range(3):
      a = patches_only[l, b].mean(0) + np.eye(4)
      layers.append(a / a.sum(-1, keepdims=True))
    want = np.linalg.multi_dot(layers[::-1]).mean(0).reshape(2, 2)
    assert np.ptp(want / want.max()) > 0.01  # not a flat map
    np.testing.assert_allclose(no_prefix[b], want / want.max(), rtol=1e-10)


def test_relative_log_amplitude_against_an_explicit_dft():
  size = 8
  i, j = np.mgrid[:size, :size]
  # a0 + a1 (-1)^(i+j): amplitude a0 H W at frequency 0 and a1 H W at (pi, pi).
  checker = (3 + 0.5 * (-1.) ** (i + j))[None, :, :, None]
  curve = fourier.relative_log_amplitude(checker)
  assert curve[0] == 0 and curve[-1] == pytest.approx(np.log(0.5 / 3))
  maps = np.random.default_rng(3).normal(size=(2, size, size, 3))
  got = fourier.relative_log_amplitude(maps)
  want = []
  for step in range(size // 2 + 1):
    w = -2 * np.pi * step / size  # the diagonal frequency (w, w), from 0 to -pi (= pi)
    basis = np.exp(-1j * w * (i + j))
    amp = [np.log(abs(np.sum(maps[b, :, :, c] * basis))) for b in range(2) for c in range(3)]
    want.append(np.mean(amp))
  np.testing.assert_allclose(got, np.array(want) - want[0], atol=1e-9)
  with pytest.raises(ValueError, match='must be square, got 4x8'):
    fourier.relative_log_amplitude(np.zeros((1, 4, 8, 1)))


def test_hessian_power_iteration_matches_eigvalsh_of_the_explicit_hessian():
  rng = np.random.default_rng(4)
  x, y = jnp.asarray(rng.normal(size=(16, 3))), jnp.asarray(rng.integers(0, 2, 16))
  params = {'w1': jnp.asarray(rng.normal(size=(3, 4))), 'w2': jnp.asarray(rng.normal(size=(4, 2)))}

  def loss_fn(p):
    logits = jnp.tanh(x @ p['w1']) @ p['w2']
    return jnp.mean(train.cross_entropy(logits, y, 0.)) + 0.05 * sum(
        jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(p))

  flat, unravel = jax.flatten_util.ravel_pytree(params)
  explicit = np.asarray(jax.hessian(lambda f: loss_fn(unravel(f)))(flat), np.float64)
  eig = np.linalg.eigvalsh((explicit + explicit.T) / 2)
  want = eig[np.argsort(-np.abs(eig))][:3]
  got = hessian.top_eigenvalues(loss_fn, params, k=3, iterations=2000, tol=1e-9)
  np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.fixture(scope='module')
def trained_runs(tmp_path_factory):
  """Tiny 3-step runs on digits: a ViT (token pooling), one with fixed sin-cos position
  embeddings, and a ResNet."""
  runs = {}
  vit = {'num_layers': 2}
  for name, model, overrides in (('vit', 'ViT-Nano_2', vit),
                                 ('sincos', 'ViT-Nano_2', dict(vit, posemb='sincos2d')),
                                 ('resnet', 'BiT-R14x0.25-small', {})):
    config = quickstart.get_config()
    config.model = config_lib.model_config(model, **overrides)
    config.total_steps = config.log_every = config.eval_every = config.checkpoint_every = 3
    config.batch_size, config.eval.fewshot_shots = 32, ()
    workdir = tmp_path_factory.mktemp(name)
    train.train_and_evaluate(config, str(workdir))
    runs[name] = str(workdir)
  return runs


def test_analyze_a_vit_run_writes_every_figure_and_the_numbers(trained_runs, tmp_path):
  results = run.analyze(trained_runs['vit'], str(tmp_path), num_images=6,
                            hessian_batches=1)
  for name in run.ANALYSES:
    assert (tmp_path / f'{name}.png').read_bytes()[:4] == b'\x89PNG', name
  saved = json.loads((tmp_path / 'analysis.json').read_text())
  assert saved['family'] == 'vit' and saved['skipped'] == []
  assert np.array(saved['distance']['pixels']).shape == (2, 2)  # 2 layers x 2 heads
  assert np.array(saved['posemb']['similarity']).shape == (4, 4, 4, 4)  # 8 px / patch 2
  assert np.array(saved['fourier']['delta_log_amplitude']).shape == (2, 3)  # 4x4 grid: 0..pi
  assert np.array(saved['hessian']['top_eigenvalues']).shape == (1, 5)
  assert results['rollout']['maps'] == saved['rollout']['maps']
  assert len(saved['noise']['accuracy_drop']) == 8
  # Two of the numbers recomputed with the NumPy reference ViT from the checkpoint: the mean
  # attention distance on the 6 evenly spaced test images, the clean accuracy on up to 512.
  _, model, params = checkpoint.load_run(trained_runs['vit'])
  test = data.load_split('digits', 'test')
  n = len(test.labels)
  spread = lambda k: np.linspace(0, n - 1, min(k, n)).astype(int)
  images = lambda idx: np.asarray(data.preprocess_eval(test.images[idx], image_size=8))
  _, weights = vit_forward(params, images(spread(6)), patch_size=2)
  for layer, want in enumerate(mean_attention_distance(weights, 4, 2)):  # 4x4 patches of 2 px
    np.testing.assert_allclose(saved['distance']['pixels'][layer], want, atol=1e-3)
  idx = spread(512)
  logits, _ = vit_forward(params, images(idx), patch_size=2)
  accuracy = np.mean(logits.argmax(-1) == test.labels[idx])
  assert saved['noise']['clean_accuracy'] == pytest.approx(accuracy, abs=1.5 / len(idx))


def test_a_test_folder_of_the_other_kind_is_analysed_as_training_evaluated_it(tmp_path):
  """Colour training images and a grayscale test folder: the run evaluates the test images as
  colour, and so does the analysis (the model's kernel wants 3 channels); its attention
  distances equal the NumPy ViT's on the grayscale PNGs repeated to RGB (Pillow's conversion)."""
  for s, (split, shape) in enumerate((('train', (8, 8, 3)), ('test', (8, 8, 1)))):
    for c, name in enumerate(('a', 'b')):
      write_images(tmp_path / 'tree' / split / name, shape=shape, count=6, seed=2 * s + c)
  config = quickstart.get_config()
  config.model = config_lib.model_config('ViT-Nano_2', num_layers=2)
  config.dataset, config.data.cache_dir = f'folder:{tmp_path / "tree"}', str(tmp_path / 'c')
  config.train_size, config.eval.val_fraction = None, 0.25
  config.total_steps = config.log_every = config.eval_every = config.checkpoint_every = 2
  config.batch_size, config.eval.fewshot_shots = 8, ()
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  saved = run.analyze(workdir, str(tmp_path / 'out'), ['distance'], num_images=12)
  gray = data.load_split(config.dataset, 'test').images  # (12, 8, 8, 1), as stored
  assert gray.shape == (12, 8, 8, 1)
  _, _, params = checkpoint.load_run(workdir)
  colour = np.asarray(data.preprocess_eval(np.repeat(gray, 3, -1), image_size=8))
  _, weights = vit_forward(params, colour, patch_size=2)
  for layer, want in enumerate(mean_attention_distance(weights, 4, 2)):  # 4x4 patches of 2 px
    np.testing.assert_allclose(saved['distance']['pixels'][layer], want, atol=1e-3)


def test_more_images_than_the_split_holds_use_and_record_them_all(trained_runs, tmp_path):
  n = len(data.load_split('digits', 'test').labels)
  every = run.analyze(trained_runs['vit'], str(tmp_path / 'all'), ['distance'], num_images=n)
  more = run.analyze(trained_runs['vit'], str(tmp_path / 'more'), ['distance'],
                     num_images=100 * n)
  assert more['distance'] == every['distance'] and more['distance']['images'] == n


def test_analyze_a_resnet_run_and_the_errors(trained_runs, tmp_path):
  results = run.analyze(trained_runs['resnet'], str(tmp_path), only=None,
                            num_images=4, hessian_batches=1)
  assert results['skipped'] == ['filters', 'posemb', 'distance', 'rollout']
  assert sorted(os.listdir(tmp_path)) == ['analysis.json', 'fourier.png', 'hessian.png',
                                          'noise.png']
  assert len(results['fourier']['delta_log_amplitude']) == 4  # R14: 4 residual units
  with pytest.raises(ValueError, match=r"\['distance'\] do not apply to BiT-R14x0.25-small"):
    run.analyze(trained_runs['resnet'], str(tmp_path), only=['distance'])
  with pytest.raises(ValueError, match=r"Unknown analyses \['saliency'\]"):
    run.analyze(trained_runs['resnet'], str(tmp_path), only=['saliency'])
  with pytest.raises(FileNotFoundError,
                     match=r'not a training run directory \(no config.json\)\.$'):
    run.analyze(str(tmp_path), str(tmp_path / 'x'))
  (tmp_path / 'sweep').mkdir()  # a sweep's folder given for one of its points
  (tmp_path / 'sweep' / 'results.csv').write_text('model\n')
  with pytest.raises(FileNotFoundError, match=re.escape(
      "(no config.json); it is a sweep's: give one of its point folders.")):
    run.analyze(str(tmp_path / 'sweep'), str(tmp_path / 'x'))
  pruned = tmp_path / 'pruned'  # a run whose checkpoints were deleted
  pruned.mkdir()
  shutil.copy(os.path.join(trained_runs['resnet'], 'config.json'), pruned)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'{pruned} is a training run without checkpoints/ (deleted, or the run stopped before its '
      'first checkpoint).')):
    run.analyze(str(pruned), str(tmp_path / 'x'))


def test_band_noise_stays_in_its_band_and_has_the_asked_std():
  rng = np.random.default_rng(5)
  size = 16
  fy = np.fft.fftfreq(size) * 2
  radius = np.minimum(np.hypot(fy[:, None], fy[None, :]), 1)
  for low, high in [(0, 0.25), (0.25, 0.5), (0.75, 1.0)]:
    noise = robustness.band_noise((3, size, size, 2), (low, high), 0.2, rng)
    np.testing.assert_allclose(noise.std(axis=(1, 2, 3)), 0.2)
    power = np.abs(np.fft.fft2(noise, axes=(1, 2))).sum(axis=(0, 3))
    inside = (radius >= low) & ((radius < high) | (high == 1))
    assert power[~inside].max() < 1e-9 * power[inside].max()
  assert robustness.bands(4) == [(0, .25), (.25, .5), (.5, .75), (.75, 1)]
  with pytest.raises(ValueError, match=r'band=\(0.5, 0.2\) must satisfy'):
    robustness.band_noise((1, 4, 4, 1), (0.5, 0.2), 0.1, rng)


def test_the_sweep_figure_draws_seed_means_in_the_reports_colours():
  """sweep.csv's summary skips 1x1 maps at pi; the figure draws, per model, the mean over its
  seeds at each size with bars of their sample standard deviation (NaN for one seed), each
  model in one colour on every panel (the models' order, as the report's figures), ticks at
  the sizes, a Hessian panel only when it was run."""
  row = {'model': 'ResNet', 'family': 'resnet', 'depth': 14, 'train_size': 100}
  summary = run._summary(row, {'fourier': {'delta_log_amplitude': [[0, -1, -2], [0, -.5], [0]]}})
  assert (summary['log_amplitude_pi_last'], summary['log_amplitude_pi_mean']) == (-.5, -1.25)
  empty = dict.fromkeys(run.SWEEP_COLUMNS[4:])
  rows = [dict(empty, model='ResNet', train_size=n, log_amplitude_pi_last=v)
          for n, v in ((100, -.5), (100, -.7), (1000, -.6), (1000, -.2))]
  rows += [dict(empty, model='ViT-4', train_size=n, distance_first_layer=d,
                log_amplitude_pi_last=v) for n, d, v in
           ((100, 3., -2.), (100, 4., -2.5), (100, 8., -1.), (1000, 5., -3.))]
  fig = plots.sweep_figure(rows)
  assert [ax.get_ylabel() for ax in fig.axes] == [
      'first-layer mean attention distance (px)', 'last block: delta log amplitude at pi']
  want = {('ResNet', 1): ([-.6, -.4], [np.std([-.5, -.7], ddof=1), np.std([-.6, -.2], ddof=1)]),
          ('ViT-4', 0): ([5., 5.], [np.std([3., 4., 8.], ddof=1), np.nan]),
          ('ViT-4', 1): ([-11 / 6, -3.], [np.std([-2., -2.5, -1.], ddof=1), np.nan])}
  for (model, panel), (means, stds) in want.items():
    ax = fig.axes[panel]
    bars = next(c for c in ax.containers if c.get_label() == model)
    line = bars.lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [100, 1000])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), means)
    assert line.get_color() == {'ResNet': 'C0', 'ViT-4': 'C1'}[model]
    # each bar from mean - std to mean + std; none where the std is NaN (one seed)
    half = [(s[1, 1] - s[0, 1]) / 2 if len(s) else np.nan
            for s in bars.lines[2][0].get_segments()]
    np.testing.assert_allclose(half, stds)
    assert [t.get_text() for t in ax.get_xticklabels()] == ['100', '1,000']
  rows[0]['hessian_top'] = 7.
  with_hessian = plots.sweep_figure(rows)
  assert with_hessian.axes[2].get_ylabel() == 'top Hessian eigenvalue (mean over batches)'
  plots.plt.close(fig)
  plots.plt.close(with_hessian)


def test_fixed_position_embeddings_skip_the_posemb_analysis(trained_runs, tmp_path):
  results = run.analyze(trained_runs['sincos'], str(tmp_path), only=None, num_images=4,
                        hessian_batches=1)
  assert results['skipped'] == ['posemb'] and 'distance' in results
  with pytest.raises(ValueError, match=r"\['posemb'\] do not apply"):
    run.analyze(trained_runs['sincos'], str(tmp_path), only=['posemb'])


def test_a_later_call_on_the_same_checkpoint_adds_to_analysis_json(trained_runs, tmp_path):
  first = run.analyze(trained_runs['resnet'], str(tmp_path), only=['fourier'], num_images=4)
  before = (tmp_path / 'fourier.png').read_bytes()
  second = run.analyze(trained_runs['resnet'], str(tmp_path), only=['noise'])
  saved = json.loads((tmp_path / 'analysis.json').read_text())
  assert saved == json.loads(json.dumps(second))  # both, the first one's numbers and figure kept
  assert saved['fourier'] == first['fourier'] and 'noise' in saved
  assert (tmp_path / 'fourier.png').read_bytes() == before
  # A run without --only leaves nothing earlier behind, and records what does not apply.
  assert run.analyze(trained_runs['resnet'], str(tmp_path), num_images=4,
                     hessian_batches=1)['skipped'] == ['filters', 'posemb', 'distance', 'rollout']
  third = run.analyze(trained_runs['resnet'], str(tmp_path), only=['hessian'],
                      hessian_batches=1)
  assert third['skipped'] == ['filters', 'posemb', 'distance', 'rollout']
  # The same run moved elsewhere (a sweep copied from a pod) is the same checkpoint.
  moved = tmp_path.parent / f'{tmp_path.name}_moved_run'
  shutil.copytree(trained_runs['resnet'], moved)
  fourth = run.analyze(str(moved), str(tmp_path), only=['noise'])
  assert fourth['workdir'] == str(moved) and fourth['hessian'] == third['hessian']
  # Another checkpoint's analyses in the same folder are refused, and nothing is changed.
  saved = (tmp_path / 'analysis.json').read_bytes()
  with pytest.raises(ValueError, match=rf"{tmp_path} holds the analyses of {moved} step 3, "
                     rf"not of {trained_runs['vit']} step 3; choose another output folder"):
    run.analyze(trained_runs['vit'], str(tmp_path), only=['distance'], num_images=4)
  assert (tmp_path / 'analysis.json').read_bytes() == saved
  assert not (tmp_path / 'distance.png').exists()


def test_two_calls_on_one_out_at_once_keep_each_others_analyses(trained_runs, tmp_path,
                                                                  monkeypatch):
  """A second call (here: run while the first one draws its figure) finishes first; the
  first one's analysis.json keeps the second one's numbers beside its own."""
  draw = plots.posemb_similarity
  def meanwhile(*args):
    draw(*args)
    inner.append(run.analyze(trained_runs['vit'], str(tmp_path), only=['filters']))
  inner = []
  monkeypatch.setattr(plots, 'posemb_similarity', meanwhile)
  outer = run.analyze(trained_runs['vit'], str(tmp_path), only=['posemb'])
  saved = json.loads((tmp_path / 'analysis.json').read_text())
  assert saved['filters'] == inner[0]['filters'] and 'posemb' not in inner[0]
  assert saved['posemb'] == outer['posemb'] and saved == json.loads(json.dumps(outer))

"""Data: digits, image folders and archives (cache, errors), subsets, batching, augmentation."""
import functools
import glob
import json
import logging
import os
import re
import sys
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from vit_jax import data
from vit_jax.data import folder, subsets


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  """Every test caches into its own folder (through $VIT_JAX_CACHE), never ~/.cache."""
  path = tmp_path / 'cache'
  monkeypatch.setenv('VIT_JAX_CACHE', str(path))
  return path


# --- digits ---


def test_digits_split_is_a_fixed_class_balanced_partition():
  from sklearn.datasets import load_digits
  digits = load_digits()
  train, test = data.load_split('digits', 'train'), data.load_split('digits', 'test')
  assert train.images.shape == (1797 - len(test.labels), 8, 8, 1)
  assert train.images.dtype == test.images.dtype == np.uint8
  assert train.labels.dtype == test.labels.dtype == np.int32
  assert train.class_names == test.class_names == tuple('0123456789')
  assert test.images.min() == 0 and test.images.max() == 255
  per_class = np.bincount(digits.target)
  np.testing.assert_array_equal(np.bincount(test.labels), np.round(per_class * 0.2))
  np.testing.assert_array_equal(np.bincount(train.labels), per_class - np.round(per_class * 0.2))
  # Together the two splits are exactly the dataset (as a multiset of image/label pairs).
  rows = lambda images, labels: sorted(zip(map(bytes, images.reshape(len(images), -1)),
                                           labels.tolist()))
  want = np.round(digits.images * 255 / 16).astype(np.uint8)
  assert (rows(np.concatenate([train.images, test.images]),
               np.concatenate([train.labels, test.labels])) == rows(want, digits.target))
  again = data.load_split('digits', 'test')
  np.testing.assert_array_equal(again.images, test.images)
  np.testing.assert_array_equal(again.labels, test.labels)


# --- image folders and archives ---


def write_images(folder, shape=(6, 6, 3), count=2, seed=0):
  """Writes `count` random PNGs into `folder`; returns their arrays in file-name order."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
  for i, a in enumerate(arrays):
    Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).save(folder / f'{i}.png')
  return arrays


def make_tree(root, classes=('dog', 'cat', 'bird'), shape=(6, 6, 3)):
  """An image-folder tree; returns {split: (images, labels)} in sorted-class order."""
  expected = {}
  for s, split in enumerate(data.SPLITS):
    images, labels = [], []
    for label, name in enumerate(sorted(classes)):
      arrays = write_images(root / split / name, shape, count=2 + label, seed=10 * s + label)
      images += arrays
      labels += [label] * len(arrays)
    expected[split] = np.stack(images), np.array(labels)
  return expected


def make_archive(tree, path, top='mini'):
  """`tree` packed under `top/` into `path`, gzipped when it ends in .gz."""
  with tarfile.open(path, 'w:gz' if str(path).endswith('.gz') else 'w') as tar:
    tar.add(tree, arcname=top)
  return path


@pytest.mark.parametrize('shape', [(6, 6, 3), (6, 6, 1)], ids=['rgb', 'gray'])
@pytest.mark.parametrize('packed', [None, 'tar.gz', 'tar'])
def test_folder_loads_pixels_labels_and_class_names(tmp_path, shape, packed):
  expected = make_tree(tmp_path / 'tree', shape=shape)
  for name, folder in [('._0.png', 'cat'), ('Thumbs.db', 'cat'), ('desktop.ini', 'dog')]:
    (tmp_path / 'tree' / 'train' / folder / name).write_bytes(b'file-manager data, left out')
  path = tmp_path / 'tree'
  if packed:
    path = make_archive(path, tmp_path / f'mini.{packed}')
  for split, (images, labels) in expected.items():
    got = data.load_split(f'folder:{path}', split)
    assert got.class_names == ('bird', 'cat', 'dog')
    assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)


def test_cache_is_written_read_and_survives_corruption(tmp_path, monkeypatch, cache_dir):
  expected, _ = make_tree(tmp_path / 'tree')['test']
  source = f'folder:{make_archive(tmp_path / "tree", tmp_path / "a.tar.gz")}'
  data.load_split(source, 'test')
  [cache_file] = glob.glob(str(cache_dir / '*.npz'))
  with np.load(cache_file, allow_pickle=False) as cached:
    np.testing.assert_array_equal(cached['images'], expected)
    assert cached['class_names'].tolist() == ['bird', 'cat', 'dog']

  real_decode = folder.decode_images
  def fail(*args):
    raise AssertionError('decoded although cached')
  monkeypatch.setattr(folder, 'decode_images', fail)
  np.testing.assert_array_equal(data.load_split(source, 'test').images, expected)

  with open(cache_file, 'wb') as f:
    f.write(b'PK\x03\x04 truncated')
  monkeypatch.setattr(folder, 'decode_images', real_decode)
  np.testing.assert_array_equal(data.load_split(source, 'test').images, expected)
  with np.load(cache_file, allow_pickle=False) as cached:  # rewritten
    np.testing.assert_array_equal(cached['images'], expected)


def test_linked_class_folders_are_followed_and_a_loop_is_not(tmp_path):
  """A tree put together from symbolic links to class folders (one holding a link back up to
  the tree) loads as the real tree does; a change inside a linked folder is seen."""
  expected = make_tree(tmp_path / 'real')
  for split in data.SPLITS:
    (tmp_path / 'linked' / split).mkdir(parents=True)
    for name in ('bird', 'cat', 'dog'):
      (tmp_path / 'linked' / split / name).symlink_to(tmp_path / 'real' / split / name)
  (tmp_path / 'real' / 'train' / 'cat' / 'loop').symlink_to(tmp_path / 'linked')
  cache = str(tmp_path / 'cache')
  for split, (images, labels) in expected.items():
    got = data.load_split(f'folder:{tmp_path / "linked"}', split, cache_dir=cache)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)
  write_images(tmp_path / 'real' / 'train' / 'cat', count=4, seed=99)  # 3 images -> 4
  grown = data.load_split(f'folder:{tmp_path / "linked"}', 'train', cache_dir=cache)
  assert len(grown.labels) == len(expected['train'][1]) + 1


def test_cache_dir_argument_and_changed_directory(tmp_path):
  """A changed tree is decoded again, and its earlier cache removed; the other split's
  cache and another tree's of the same name stay."""
  make_tree(tmp_path / 'tree')
  make_tree(tmp_path / 'other' / 'tree')
  source = f'folder:{tmp_path / "tree"}'
  mine = str(tmp_path / 'mine')
  before = data.load_split(source, 'train', cache_dir=mine)
  data.load_split(source, 'test', cache_dir=mine)
  data.load_split(f'folder:{tmp_path / "other" / "tree"}', 'train', cache_dir=mine)
  caches = lambda: sorted(os.listdir(mine))
  earlier = caches()
  assert len(earlier) == 3 and len([n for n in earlier if '-train-' in n]) == 2
  write_images(tmp_path / 'tree' / 'train' / 'cat', count=4, seed=99)  # 3 images -> 4
  after = data.load_split(source, 'train', cache_dir=mine)
  assert len(after.labels) == len(before.labels) + 1
  [new] = set(caches()) - set(earlier)
  [removed] = set(earlier) - set(caches())
  assert removed.rsplit('-', 1)[0] == new.rsplit('-', 1)[0] and len(caches()) == 3
  with np.load(os.path.join(mine, new), allow_pickle=False) as cached:
    np.testing.assert_array_equal(cached['labels'], after.labels)


def bad_tree(tmp_path, problem):
  """Builds a tree with `problem` under tmp_path / 'bad'; returns the source string."""
  root = tmp_path / 'bad'
  if problem == 'no test folder':
    write_images(root / 'train' / 'cat')
  elif problem == 'no class folders':
    write_images(root / 'train' / 'cat')
    os.makedirs(root / 'test')
  elif problem == 'empty class folder':
    write_images(root / 'train' / 'cat')
    os.makedirs(root / 'test' / 'cat')
  elif problem == 'differing classes':
    write_images(root / 'train' / 'cat')
    write_images(root / 'train' / 'dog')
    write_images(root / 'test' / 'cat')
    write_images(root / 'test' / 'bird')
  elif problem == 'undecodable image':
    write_images(root / 'test' / 'cat')
    (root / 'test' / 'cat' / 'broken.png').write_bytes(b'not an image')
  elif problem == 'mixed sizes':
    write_images(root / 'test' / 'cat', shape=(6, 6, 3))
    write_images(root / 'test' / 'dog', shape=(5, 6, 3))
  elif problem == 'not an archive':
    root = tmp_path / 'images.tar.gz'
    root.write_bytes(b'plain text')
  return f'folder:{root}'


@pytest.mark.parametrize('problem,error,message', [
    ('missing path', FileNotFoundError, r'bad does not exist'),
    ('no test folder', FileNotFoundError, r"bad has no 'test' folder; it holds \['train'\]"),
    ('no class folders', ValueError, r'bad/test has no class folders'),
    ('empty class folder', ValueError, r'Class folder .*bad/test/cat is empty'),
    ('differing classes', ValueError, r"only in test: \['bird'\], only in train: \['dog'\]"),
    ('undecodable image', ValueError, r'Cannot decode the image .*bad/test/cat/broken.png: not an '
     r"image format Pillow can identify; set data.corrupt_images='skip'"),
    ('mixed sizes', ValueError, r'bad/test/dog/0.png is 5x6 \(HxW\) but .*cat/0.png is 6x6 '
     r'\(HxW\): all images of a split must have the same size'),
    ('not an archive', ValueError, r'images.tar.gz is neither a directory nor a readable'),
])
def test_folder_errors_name_the_problem(tmp_path, problem, error, message):
  with pytest.raises(error, match=message):
    data.load_split(bad_tree(tmp_path, problem), 'test')


def test_a_tree_with_a_val_folder_evaluates_on_it_when_asked(tmp_path):
  """ImageNet's layout (train/, val/): 'val' is a split like 'test'; asking for the missing
  'test' says which field picks 'val'; the classes of val are checked against train's."""
  images = {split: write_images(tmp_path / 'tree' / split / 'cat', seed=s)
            for s, split in enumerate(('train', 'val'))}
  val = data.load_split(f'folder:{tmp_path / "tree"}', 'val', cache_dir=str(tmp_path / 'cache'))
  np.testing.assert_array_equal(val.images, np.stack(images['val']))
  assert val.class_names == ('cat',)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"{tmp_path / 'tree'} has no 'test' folder; it holds ['train', 'val']; set "
      "data.eval_split='val' to evaluate on it.")):
    data.load_split(f'folder:{tmp_path / "tree"}', 'test')
  write_images(tmp_path / 'tree' / 'val' / 'dog')
  with pytest.raises(ValueError, match=re.escape(
      "differ between train and val: only in val: ['dog'], only in train: []")):
    data.load_split(f'folder:{tmp_path / "tree"}', 'val', cache_dir=str(tmp_path / 'cache'))


def test_a_run_opens_its_evaluation_split_before_decoding_the_training_split(tmp_path,
                                                                             cache_dir):
  """A wrong evaluation split (ImageNet's layout: no 'test') fails before the training split,
  usually the larger, is decoded; named, it loads."""
  for s, split in enumerate(('train', 'val')):
    write_images(tmp_path / 'tree' / split / 'cat', count=4, seed=s)
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.dataset, config.data.kind = f'folder:{tmp_path / "tree"}', 'memory'
  config.train_size, config.eval.val_fraction = None, 0.25
  with pytest.raises(FileNotFoundError, match="has no 'test' folder; it holds"):
    subsets.load_data(config)
  assert not list(cache_dir.glob('*.npz'))  # nothing decoded
  config.data.eval_split = 'val'
  train, val, test = subsets.load_data(config)
  assert (len(train.labels), len(val.labels), len(test.labels)) == (3, 1, 4)
  assert sorted(p.name.split('-')[1] for p in cache_dir.glob('*.npz')) == ['train', 'val']


@pytest.mark.parametrize('packed', [None, 'tar.gz'])
def test_a_few_shot_folder_is_evaluated_on_its_test_or_else_its_val_folder(tmp_path, packed):
  """The probe has no split field: a 'folder:' few-shot dataset in ImageNet's layout (train/,
  val/) is evaluated on val/, one with test/ on test/; one with neither is refused, naming
  the field and the folders looked for."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.cache_dir = str(tmp_path / 'cache')
  for held, evaluated in ((('train', 'val', 'test'), 'test'), (('train', 'val'), 'val'),
                          (('train',), None)):
    path = tmp_path / '-'.join(held)
    images = {split: write_images(path / split / 'cat', count=2 + s, seed=s)
              for s, split in enumerate(held)}
    if packed:
      path = make_archive(path, tmp_path / f'{path.name}.tar.gz')
    config.eval.fewshot_dataset = f'folder:{path}'
    if evaluated is None:
      with pytest.raises(FileNotFoundError) as e:
        data.probe_splits(config, 3)
      assert str(e.value) == (
          f"config.eval.fewshot_dataset='folder:{path}': {path} has no split to evaluate the "
          f"probe on, none of ['test', 'validation', 'val']; it holds ['train'].")
      with pytest.raises(FileNotFoundError, match=re.escape(str(e.value))):
        data.check_present(config)  # as the sweep checks its points before running any
      continue
    data.check_present(config)
    shots_from, probe_test = data.probe_splits(config, 3)
    np.testing.assert_array_equal(shots_from.images, np.stack(images['train']))
    np.testing.assert_array_equal(probe_test.images, np.stack(images[evaluated]))
    # for a grayscale model the images are converted as Pillow converts them
    shots_from, probe_test = data.probe_splits(config, 1)
    np.testing.assert_array_equal(shots_from.images, pillow(np.stack(images['train']), 'L'))
    np.testing.assert_array_equal(probe_test.images, pillow(np.stack(images[evaluated]), 'L'))


@pytest.mark.parametrize('packed', [None, 'tar.gz'])
def test_a_split_of_grayscale_and_colour_images_is_held_as_colour(tmp_path, packed):
  """Grayscale images among colour ones of one size are held as colour, as Pillow converts
  them (as streaming reads them), so 'auto' holds the split in memory; data.channels=1 reads
  every image as Pillow's 'L'."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'mixed'
  for split in data.SPLITS:  # (the same images in both)
    colour = np.stack(write_images(root / split / 'cat', shape=(6, 6, 3), count=3, seed=1))
    gray = np.stack(write_images(root / split / 'dog', shape=(6, 6, 1), count=3, seed=2))
  if packed:
    root = make_archive(root, tmp_path / 'mixed.tar.gz')
  config = quickstart.get_config()
  config.dataset, config.data.cache_dir = f'folder:{root}', str(tmp_path / 'cache')
  assert data.choose_kind(config) == ('memory', '6 images, 648 bytes decoded <= 4 GB')
  split = data.open_split(config, 'train')
  np.testing.assert_array_equal(split.images, np.concatenate([colour, pillow(gray, 'RGB')]))
  config.data.channels = 1
  np.testing.assert_array_equal(data.open_split(config, 'train').images,
                                np.concatenate([pillow(colour, 'L'), gray]))


def test_a_test_folder_of_the_other_kind_is_read_as_the_training_images(tmp_path):
  """Colour training images and a grayscale test folder: the test images are read as colour,
  as Pillow converts them (the model is built for the training images)."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  write_images(tmp_path / 'tree' / 'train' / 'cat', shape=(6, 6, 3), count=4)
  gray = np.stack(write_images(tmp_path / 'tree' / 'test' / 'cat', shape=(6, 6, 1), count=3))
  config = quickstart.get_config()
  config.dataset, config.data.cache_dir = f'folder:{tmp_path / "tree"}', str(tmp_path / 'c')
  config.train_size, config.eval.val_fraction = None, 0.25
  train, _, test = subsets.load_data(config)
  assert (train.channels, test.channels) == (3, 3)
  np.testing.assert_array_equal(test.images, pillow(gray, 'RGB'))


def test_a_folder_with_only_train_trains_and_evaluates_on_slices_of_it(tmp_path):
  """A tree with train/ alone: its missing test/ is refused with the way out, and slices of
  train/ (one fixed pseudo-random order, classes mixed, the same images in memory and
  streamed) are trained and evaluated on; a slice past the end is refused by name, from the
  tree's listing before any image is decoded and from the decoded-array cache after."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  images = {name: write_images(tmp_path / 'tree' / 'train' / name, shape=(8, 8, 3), count=10,
                               seed=s) for s, name in enumerate(('cat', 'dog'))}
  every = np.stack(images['cat'] + images['dog'])  # class, then name order
  config = quickstart.get_config()
  config.dataset, config.data.cache_dir = f'folder:{tmp_path / "tree"}', str(tmp_path / 'c')
  config.train_size, config.eval.val_fraction = None, 0.25
  with pytest.raises(FileNotFoundError, match=re.escape(
      "it holds ['train']; to evaluate on a part of train/, set data.train_split='train[:90%]' "
      "and data.eval_split='train[90%:]'.")):
    data.check_present(config)
  past_the_end = re.escape(
      "data.eval_split='train[15:21]': Split 'train[15:21]' reaches past the end of its split: "
      '21 is more than its 20 images.')
  config.data.train_split, config.data.eval_split = 'train[:80%]', 'train[15:21]'
  with pytest.raises(ValueError, match=past_the_end):
    data.check_present(config)
  config.data.eval_split = 'train[80%:]'
  data.check_present(config)
  order = np.random.default_rng(0).permutation(20)
  for kind in ('memory', 'stream'):
    config.data.kind = kind
    train, val, test = subsets.load_data(config)
    assert (len(train.labels), len(val.labels), len(test.labels)) == (12, 4, 4)
    pixels = np.concatenate([b[0] for b in data.split_eval_batches(test, 4, 0, 1, image_size=8)])
    np.testing.assert_array_equal(pixels, every[np.sort(order[16:])])
    head = data.open_split(config, 'train[:80%]')
    np.testing.assert_array_equal(head.labels, np.sort(order[:16]) >= 10)  # both classes
  # An archive is weighed and checked from its decoded-array cache, the slice's share of it.
  config.dataset = f'folder:{make_archive(tmp_path / "tree", tmp_path / "tree.tar")}'
  config.data.kind = 'auto'
  assert data.choose_kind(config)[1] == '16 images, 3.07 kB decoded <= 4 GB'  # from a listing
  data.open_split(config, 'train[:80%]')  # decodes train/ and caches it
  assert data.choose_kind(config)[1] == '16 images, 3.07 kB decoded <= 4 GB'
  config.data.eval_split = 'train[15:21]'
  with pytest.raises(ValueError, match=past_the_end):
    data.check_present(config)


def test_corrupt_images_can_be_skipped_and_are_counted(tmp_path, caplog):
  """data.corrupt_images='skip' leaves broken files out, names and counts them (also when the
  split comes from the cache) and keeps the labels of the others aligned."""
  source = bad_tree(tmp_path, 'undecodable image')
  root = source[len('folder:'):]
  dogs = write_images(tmp_path / 'bad' / 'test' / 'dog', count=3, seed=5)
  (tmp_path / 'bad' / 'test' / 'dog' / 'zz.jpg').write_bytes(b'\xff\xd8 truncated jpeg')
  full = data.load_split(source, 'test', corrupt_images='skip')
  for split in (full, data.load_split(source, 'test', corrupt_images='skip')):  # decoded, cached
    assert split.skipped == (f'{root}/test/cat/broken.png', f'{root}/test/dog/zz.jpg')
    assert split.labels.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(split.images[2:], np.stack(dogs))
  assert 'Skipped 2 image(s) of the test split' in caplog.text
  with pytest.raises(ValueError, match=r"broken.png: .*set data.corrupt_images='skip'"):
    data.load_split(source, 'test')  # the default is an error, whatever the cache holds
  with pytest.raises(ValueError, match=r"data.corrupt_images='drop' must be one of"):
    data.load_split(source, 'test', corrupt_images='drop')


@pytest.mark.parametrize('source,split,message', [
    ('imagenet', 'train', r"config.dataset='imagenet' is not one of 'digits', 'folder:"),
    ('folder:', 'train', r"config.dataset='folder:' is not one of"),
    ('digits', 'validation', r"The digits have no 'validation' split; they have 'train' and "
     r"'test'\."),
])
def test_bad_source_or_split(source, split, message):
  with pytest.raises(ValueError, match=message):
    data.load_split(source, split)


def test_tfds_without_tensorflow_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # import fails: not installed
  with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]".*folder:'):
    data.load_split('tfds:cifar10', 'train')


# --- nested subsets ---


IMBALANCED = np.random.default_rng(1).permutation(np.repeat([0, 1, 2, 3], [40, 25, 8, 3]))


def test_nested_subset_is_nested_sorted_and_class_balanced():
  subsets = {size: data.nested_subset(IMBALANCED, size, seed=3) for size in (10, 25, 60)}
  assert set(subsets[10]) <= set(subsets[25]) <= set(subsets[60])
  available = np.bincount(IMBALANCED)
  for size, subset in subsets.items():
    assert len(subset) == len(set(subset)) == size
    np.testing.assert_array_equal(subset, np.sort(subset))
    counts = np.bincount(IMBALANCED[subset], minlength=4)
    # Classes with examples left are within one of the largest class count.
    assert all(c >= counts.max() - 1 for c, n in zip(counts, available) if c < n), counts
  np.testing.assert_array_equal(np.bincount(IMBALANCED[subsets[25]]), [8, 7, 7, 3])
  np.testing.assert_array_equal(data.nested_subset(IMBALANCED, 25, seed=3), subsets[25])
  assert set(data.nested_subset(IMBALANCED, 25, seed=4)) != set(subsets[25])
  np.testing.assert_array_equal(data.nested_subset(IMBALANCED, None, 0), np.arange(76))


@pytest.mark.parametrize('size', [0, 77])
def test_nested_subset_errors(size):
  with pytest.raises(ValueError, match=rf'train_size={size} .* 76 available'):
    data.nested_subset(IMBALANCED, size, seed=0)


# --- host-side batching ---


def numbered_split(n=10):
  """Image i is filled with the value i; label i % 3."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1))
  return data.Split(images.copy(), (np.arange(n) % 3).astype(np.int32), ('a', 'b', 'c'))


def example_ids(batches):
  return np.concatenate([images[:, 0, 0, 0] for images, *_ in batches])


@pytest.mark.parametrize('batch_size', [4, 25])
def test_train_iterator_visits_every_example_once_per_epoch(batch_size):
  it = data.TrainIterator(numbered_split(), batch_size, seed=0)
  batches = [next(it) for _ in range(-(-30 // batch_size))]
  for images, labels in batches:
    assert images.shape == (batch_size, 2, 2, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, images[:, 0, 0, 0] % 3)
  ids = example_ids(batches)
  for epoch in range(3):
    np.testing.assert_array_equal(np.sort(ids[10 * epoch:10 * epoch + 10]), np.arange(10))
  assert not np.array_equal(ids[:10], ids[10:20])  # epochs are reshuffled
  assert it.get_state() == {'position': len(batches) * batch_size}


def test_train_iterator_processes_split_the_global_batch():
  single = data.TrainIterator(numbered_split(), 6, seed=1)
  parts = [data.TrainIterator(numbered_split(), 6, seed=1, process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(5):
    images, labels = next(single)
    (images0, labels0), (images1, labels1) = map(next, parts)
    assert images0.shape == (3, 2, 2, 1)
    np.testing.assert_array_equal(np.concatenate([images0, images1]), images)
    np.testing.assert_array_equal(np.concatenate([labels0, labels1]), labels)


def test_train_iterator_resumes_from_state_and_depends_on_seed():
  it = data.TrainIterator(numbered_split(), 4, seed=2)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = data.TrainIterator(numbered_split(), 4, seed=2)
  resumed.set_state(state)
  np.testing.assert_array_equal(example_ids(next(resumed) for _ in range(6)),
                                example_ids(next(it) for _ in range(6)))
  ids = lambda seed: example_ids(next(data.TrainIterator(numbered_split(), 10, seed)) for _ in
                                 range(2))
  np.testing.assert_array_equal(ids(5), ids(5))
  assert not np.array_equal(ids(5), ids(6))


@pytest.mark.parametrize('batch_size,processes,split,message', [
    (0, 1, numbered_split(), r'batch_size=0 must be a positive multiple'),
    (5, 2, numbered_split(), r'batch_size=5 must be a positive multiple of the process count 2'),
    (4, 1, numbered_split(0), r'empty split'),
])
def test_train_iterator_errors(batch_size, processes, split, message):
  with pytest.raises(ValueError, match=message):
    data.TrainIterator(split, batch_size, seed=0, process_count=processes)


def test_eval_batches_cover_the_split_once_with_padding():
  split = numbered_split()
  batches = list(data.eval_batches(split, 4))
  assert len(batches) == 3
  for images, labels, mask in batches:
    assert images.shape == (4, 2, 2, 1) and labels.shape == mask.shape == (4,)
  masks = np.concatenate([mask for *_, mask in batches])
  np.testing.assert_array_equal(masks, np.arange(12) < 10)
  np.testing.assert_array_equal(example_ids(batches)[masks], np.arange(10))
  np.testing.assert_array_equal(np.concatenate([labels for _, labels, _ in batches])[masks],
                                split.labels)
  halves = [list(data.eval_batches(split, 4, p, 2)) for p in range(2)]
  for whole, first, second in zip(batches, *halves):
    for a, b, c in zip(whole, first, second):
      np.testing.assert_array_equal(np.concatenate([b, c]), a)


# --- device-side preprocessing ---


def run_augment(images, seed=0, jit=True, **kwargs):
  """`augment` with defaults for the options not given; jitted unless `jit=False` (under jit
  XLA may compute x / 127.5 - 1 one float32 ulp away from NumPy)."""
  options = dict(image_size=images.shape[1], crop=False, crop_scale=(0.5, 1.),
                 crop_ratio=(0.75, 4 / 3), flip=False) | kwargs
  fn = functools.partial(data.augment, **options)
  return np.asarray((jax.jit(fn) if jit else fn)(images, jax.random.PRNGKey(seed)))


RANDOM_IMAGES = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
AS_FLOAT = RANDOM_IMAGES.astype(np.float32) / 127.5 - 1


def test_augment_shape_range_and_identity():
  out = run_augment(RANDOM_IMAGES, image_size=12, crop=True, flip=True)
  assert out.shape == (32, 12, 12, 3) and out.dtype == np.float32
  assert out.min() >= -1 and out.max() <= 1
  np.testing.assert_array_equal(run_augment(RANDOM_IMAGES, jit=False), AS_FLOAT)
  np.testing.assert_allclose(run_augment(RANDOM_IMAGES), AS_FLOAT, atol=2e-7)


def test_augment_flip_mirrors_about_half():
  out = run_augment(RANDOM_IMAGES, flip=True, jit=False)
  same = [np.array_equal(o, x) for o, x in zip(out, AS_FLOAT)]
  mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, AS_FLOAT)]
  assert all(s or m for s, m in zip(same, mirrored))
  assert any(same) and any(mirrored)


@pytest.mark.slow
def test_augment_crop_geometry():
  # The whole square with ratio 1 is the plain resize.
  full = run_augment(RANDOM_IMAGES, image_size=12, crop=True, crop_scale=(1., 1.),
                     crop_ratio=(1., 1.))
  np.testing.assert_allclose(full, run_augment(RANDOM_IMAGES, image_size=12), atol=1e-5)
  # Crops of a constant image stay constant.
  constant = np.full((8, 8, 8, 1), 200, np.uint8)
  np.testing.assert_allclose(run_augment(constant, image_size=6, crop=True, crop_scale=(0.1, 1.)),
                             200 / 127.5 - 1, atol=1e-5)
  # A quarter of the area of an 8x8 horizontal ramp (value 30 * column) at scale 1 is a
  # 4-pixel window at a random offset in [0, 4]: bilinear sampling of a linear ramp is exact.
  ramp = np.broadcast_to(30 * np.arange(8, dtype=np.uint8), (16, 8, 8)).copy()[..., None]
  out = (run_augment(ramp, image_size=4, crop=True, crop_scale=(0.25, 0.25),
                     crop_ratio=(1., 1.))[..., 0] + 1) * 127.5 / 30
  np.testing.assert_allclose(np.diff(out, axis=2), 1, atol=1e-4)
  np.testing.assert_allclose(np.diff(out, axis=1), 0, atol=1e-4)
  offsets = out[:, 0, 0]
  assert offsets.min() >= -1e-4 and offsets.max() <= 4 + 1e-4 and np.ptp(offsets) > 1
  # Different keys give different crops.
  crops = lambda seed: run_augment(RANDOM_IMAGES, seed, crop=True)
  assert not np.allclose(crops(0), crops(1))


def test_augment_rejects_bad_crop_scale():
  with pytest.raises(ValueError, match=r'augment.crop_scale=\(0.5, 1.5\) must satisfy'):
    run_augment(RANDOM_IMAGES, crop=True, crop_scale=(0.5, 1.5))


def pillow(images, mode):
  """uint8 images (N, H, W, C) converted one by one by Pillow to `mode` ('L' or 'RGB')."""
  return np.stack([np.asarray(Image.fromarray(i.squeeze(-1) if i.shape[-1] == 1 else i)
                              .convert(mode)) for i in images]).reshape(*images.shape[:3], -1)


def test_convert_channels_is_pillows_conversion():
  """Colour to grayscale: Pillow's 'L' (its luma rounded to levels), exactly; grayscale to
  colour: Pillow's 'RGB'; the same kind or None: unchanged."""
  rgb = np.random.default_rng(7).integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
  gray = data.convert_channels(rgb, 1)
  assert gray.dtype == np.uint8
  np.testing.assert_array_equal(gray, pillow(rgb, 'L'))
  np.testing.assert_array_equal(data.convert_channels(gray, 3), pillow(gray, 'RGB'))
  for same in (3, None):
    assert data.convert_channels(rgb, same) is rgb
  with pytest.raises(ValueError, match='Images of 3 channels cannot be turned into 2 channels'):
    data.convert_channels(rgb, 2)


@pytest.mark.parametrize('kind', ['memory', 'stream'])
def test_data_channels_reads_every_image_as_grayscale_or_colour(tmp_path, kind, caplog):
  """data.channels=1 reads a colour tree as Pillow's 'L' of its images, in memory and streamed
  (training and evaluation batches); 'auto' weighs the split at the channels asked for and
  says them; the digits read as colour are their grayscale repeated."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  expected = make_tree(tmp_path / 'tree', shape=(8, 8, 3))
  config = quickstart.get_config()
  config.dataset, config.image_size = f'folder:{tmp_path / "tree"}', 8
  config.data.kind, config.data.cache_dir = kind, str(tmp_path / 'cache')
  config.augment.crop, config.augment.flip, config.batch_size = False, False, 4
  batches = {}
  for channels in (None, 1):
    config.data.channels = channels
    split = data.open_split(config, 'test')
    assert split.channels == (channels or 3)
    stream = data.train_iterator(split, config)
    batches[channels] = (next(stream)[0], next(iter(data.split_eval_batches(
        split, 4, 0, 1, image_size=8)))[0])
    if kind == 'memory':
      np.testing.assert_array_equal(split.images, pillow(expected['test'][0], 'L')
                                    if channels else expected['test'][0])
  for got, colour in zip(batches[1], batches[None]):
    assert got.shape == (*colour.shape[:3], 1)
    np.testing.assert_array_equal(got, pillow(colour, 'L'))
  config.data.kind, config.data.channels = 'auto', None
  stored = data.choose_kind(config)[1]
  config.data.channels = 1
  assert (stored, data.choose_kind(config)[1]) == (
      '9 images, 1.73 kB decoded <= 4 GB', '9 images, 576 bytes decoded <= 4 GB')
  caplog.set_level(logging.INFO)
  data.resolve_kind(config)
  assert caplog.records[-1].getMessage() == (
      f'data: {config.dataset}, memory (9 images, 576 bytes decoded <= 4 GB), read as grayscale'
      ' (data.channels=1)')
  config.dataset, config.data.channels = 'digits', 3
  digits = data.load_split('digits', 'test').images
  np.testing.assert_array_equal(data.open_split(config, 'test').images,
                                np.repeat(digits, 3, axis=-1))


def test_preprocess_eval_identity_and_central_crop():
  np.testing.assert_array_equal(data.preprocess_eval(RANDOM_IMAGES, image_size=8), AS_FLOAT)
  fn = jax.jit(data.preprocess_eval, static_argnames=('image_size', 'crop_fraction'))
  np.testing.assert_allclose(fn(RANDOM_IMAGES, image_size=4, crop_fraction=0.5),
                             AS_FLOAT[:, 2:6, 2:6], atol=1e-6)
  with pytest.raises(ValueError, match=r'eval.crop_fraction=0 must be in \(0, 1\]'):
    data.preprocess_eval(RANDOM_IMAGES, image_size=8, crop_fraction=0)

"""How large a split is decoded in memory, what `data.kind='auto'` decides by, found without
decoding it: from the decoded-array cache's header, or from the record count and the headers
of a few records spread over the split (a prepared directory's count is in its metadata, so
no image file is listed or opened but those few).

Memory holds every image at its stored size, one size per split (grayscale as one channel,
other modes as three; a split that mixes both as three; or as data.channels asks), so a split of
H x W images with C channels takes N x H x W x C bytes; a split whose sampled images differ in
size cannot be held.
"""
import dataclasses
import io

from PIL import Image

from vit_jax.data import subsets
from vit_jax.data.folder import GRAY_MODES
from vit_jax.data.pipeline import RecordSplit

GB = 1e9
SAMPLE = 16  # records whose headers are read


@dataclasses.dataclass(frozen=True)
class Footprint:
  """examples: N; shapes: the distinct (H, W, C) held (one when the split can be held);
  channels: the C the images are read as (data.channels), None: as stored."""
  examples: int
  shapes: tuple[tuple[int, int, int], ...]
  channels: int | None = None

  @property
  def nbytes(self) -> int | None:
    """N x H x W x C, or None when the images differ in size."""
    if len(self.shapes) != 1:
      return None
    height, width, channels = self.shapes[0]
    return self.examples * height * width * (self.channels or channels)

  def describe(self) -> str:
    """'50,000 images, 154 MB decoded' or '9 images of different sizes (...)'."""
    if not self.shapes:
      return f'{self.examples:,} images, none of the sampled headers readable'
    if self.nbytes is None:
      seen = ', '.join('x'.join(map(str, s)) for s in self.shapes[:3])
      more = ', ...' if len(self.shapes) > 3 else ''
      return f'{self.examples:,} images of different sizes (HxWxC {seen}{more})'
    return f'{self.examples:,} images, {size(self.nbytes)} decoded'


def size(nbytes: float) -> str:
  """'6.14 kB', '123 MB', '1.28e+03 GB': bytes in decimal units, three digits."""
  for unit, scale in (('GB', GB), ('MB', 1e6), ('kB', 1e3)):
    if nbytes >= scale:
      return f'{nbytes / scale:.3g} {unit}'
  return f'{nbytes:.3g} bytes'


def of_array(shape: tuple[int, ...]) -> Footprint:
  """The footprint of a decoded (N, H, W, C) array."""
  return Footprint(shape[0], (tuple(shape[1:]),))


def _shape(data: bytes) -> tuple[int, int, int]:
  """(H, W, C) of an encoded image as memory would hold it, from its header."""
  with Image.open(io.BytesIO(data)) as image:
    width, height = image.size
    return height, width, 1 if image.mode in GRAY_MODES else 3


def of_records(split: RecordSplit, sample: int = SAMPLE) -> Footprint:
  """The footprint of a record split from its length and the headers of `sample` evenly
  spaced records (a header that cannot be read is passed over)."""
  shapes = []
  for i in subsets.evenly_spaced(len(split), sample):
    try:
      shape = _shape(split.source[split.record(int(i))][0])
    except (OSError, SyntaxError, ValueError):  # what Pillow raises for broken files
      continue
    if shape not in shapes:
      shapes.append(shape)
  if len({shape[:2] for shape in shapes}) == 1:  # one size: grayscale among colour held as colour
    shapes = [max(shapes)]
  return Footprint(len(split), tuple(shapes))

"""Robustness to noise confined to a frequency band (Park & Kim, ICLR 2022, Figure 9)."""
import numpy as np


def band_noise(shape: tuple[int, ...], band: tuple[float, float], std: float,
               rng: np.random.Generator) -> np.ndarray:
  """Gaussian noise keeping only the spatial frequencies whose radius lies in `band`.

  The radius of frequency (u, v) is sqrt(u^2 + v^2) / pi, clipped to 1 (so 1 is the Nyquist
  frequency and the corners count as 1). The filtered noise is rescaled to standard
  deviation `std` over each image.

  Args:
    shape: (B, H, W, C).
    band: [low, high) radius range in [0, 1]; high = 1 includes the Nyquist frequency.
    std: standard deviation of the result per image.

  Returns:
    (B, H, W, C) float64 noise.
  """
  low, high = band
  if not 0 <= low < high <= 1:
    raise ValueError(f'band={band} must satisfy 0 <= low < high <= 1.')
  _, h, w, _ = shape
  fy = np.fft.fftfreq(h) * 2  # in units of pi
  fx = np.fft.fftfreq(w) * 2
  radius = np.minimum(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2), 1.)
  keep = (radius >= low) & ((radius < high) | (high == 1))
  spectrum = np.fft.fft2(rng.normal(size=shape), axes=(1, 2)) * keep[None, :, :, None]
  noise = np.real(np.fft.ifft2(spectrum, axes=(1, 2)))
  scale = noise.std(axis=(1, 2, 3), keepdims=True)
  return noise * std / np.where(scale > 0, scale, 1)


def bands(count: int) -> list[tuple[float, float]]:
  """`count` equal-width bands covering [0, 1]."""
  edges = np.linspace(0, 1, count + 1)
  return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]

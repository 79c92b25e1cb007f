"""Every image mode Pillow opens decodes to the right 8-bit RGB (common.data.imagefolder.to_rgb)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageCms

from common.cli.errors import UserError
from common.data.imagefolder import load_rgb

H, W = 6, 8
GRAY = (np.arange(H * W).reshape(H, W) * 5 + 3).astype(np.uint8)                 # 3 .. 238
RGB = np.stack([GRAY, 255 - GRAY, (GRAY // 2 + 40).astype(np.uint8)], -1)        # three different channels
MILD = (RGB // 2 + 64).astype(np.uint8)                                          # in-gamut colours for LAB
ALPHA = (np.arange(H * W).reshape(H, W) * 5).astype(np.uint8)                     # 0 (transparent) .. 235


def rgb_of_gray(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


def over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return color.astype(np.float64) * a + 255.0 * (1 - a)


def decode(tmp_path, img: Image.Image, ext: str, **save) -> np.ndarray:
    path = tmp_path / f"img.{ext}"
    img.save(path, **save)
    return np.asarray(load_rgb(path)).astype(np.int64)


def lab_image() -> Image.Image:
    t = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(Image.fromarray(MILD), t)


def pa_image() -> Image.Image:
    """Palette index = gray level (a gray palette), alpha band = ALPHA."""
    img = Image.frombytes("PA", (W, H), np.stack([GRAY, ALPHA], -1).tobytes())
    img.putpalette([v for g in range(256) for v in (g, g, g)])
    return img


# (id, image factory, file type, expected uint8 RGB, tolerance)
CASES = [
    ("RGB", lambda: Image.fromarray(RGB), "png", RGB, 0),
    ("L", lambda: Image.fromarray(GRAY), "png", rgb_of_gray(GRAY), 0),
    ("1", lambda: Image.fromarray(GRAY > 100), "png", rgb_of_gray(np.where(GRAY > 100, 255, 0)), 0),
    ("I;16 png", lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), "png", rgb_of_gray(GRAY), 0),
    ("I;16 odd values", lambda: Image.fromarray(np.full((H, W), 1000, np.uint16)), "png",
     np.full((H, W, 3), 4), 0),                                                        # round(1000 / 257) = 4
    ("I;16B tiff", lambda: Image.fromarray(GRAY.astype(">u2") * 257), "tif", rgb_of_gray(GRAY), 0),
    ("I 32-bit int", lambda: Image.fromarray(GRAY.astype(np.int32) * 257), "tif", rgb_of_gray(GRAY), 0),
    ("I negative clipped", lambda: Image.fromarray(np.full((H, W), -5, np.int32)), "tif", np.zeros((H, W, 3)), 0),
    ("F in [0,1]", lambda: Image.fromarray(GRAY.astype(np.float32) / 255), "tif", rgb_of_gray(GRAY), 0),
    ("F in [0,255]", lambda: Image.fromarray(GRAY.astype(np.float32)), "tif", rgb_of_gray(GRAY), 0),
    ("LA", lambda: Image.fromarray(np.stack([GRAY, ALPHA], -1), "LA"), "png",
     over_white(rgb_of_gray(GRAY), ALPHA), 1),
    ("RGBA", lambda: Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1)), "png", over_white(RGB, ALPHA), 1),
    ("PA", pa_image, "tif", over_white(rgb_of_gray(GRAY), ALPHA), 1),
    ("CMYK", lambda: Image.fromarray(RGB).convert("CMYK"), "tif", RGB, 0),
    ("YCbCr", lambda: Image.fromarray(RGB).convert("YCbCr"), "tif", RGB, 3),
    ("LAB", lab_image, "tif", MILD, 3),
]


@pytest.mark.parametrize("name, make, ext, expected, tol", CASES, ids=[c[0] for c in CASES])
def test_mode_decodes_to_known_pixels(tmp_path, name, make, ext, expected, tol):
    got = decode(tmp_path, make(), ext)
    assert got.shape == (H, W, 3)
    assert np.abs(got - np.rint(expected)).max() <= tol


def test_palette_with_transparency_is_white_where_transparent(tmp_path):
    img = Image.fromarray(np.arange(H * W, dtype=np.uint8).reshape(H, W) % 4, "P")
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 0, 7, 8, 9] + [0] * 756)
    got = decode(tmp_path, img, "png", transparency=2)          # index 2 is transparent
    idx = np.arange(H * W).reshape(H, W) % 4
    pal = np.array([[10, 20, 30], [200, 100, 50], [255, 255, 255], [7, 8, 9]])
    assert (got == pal[idx]).all()


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.fromarray(RGB).transpose(Image.Transpose.ROTATE_90)   # as a sideways camera writes it
    exif = Image.Exif()
    exif[0x0112] = 6                                                      # "rotate 90 CW to display"
    got = decode(tmp_path, stored, "png", exif=exif.tobytes())
    assert (got == RGB).all()


def test_float_image_with_nan_is_refused(tmp_path):
    a = GRAY.astype(np.float32)
    a[0, 0] = np.nan
    Image.fromarray(a).save(tmp_path / "nan.tif")
    with pytest.raises(UserError, match="nan.tif: corrupt or unreadable image"):
        load_rgb(tmp_path / "nan.tif")

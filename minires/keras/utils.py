"""keras.utils: the helpers tutorials call."""
import os

from ..imagenet import img_to_array, load_img  # noqa: F401
from ..initializers import set_random_seed  # noqa: F401
from ..io.download import cache_dir as minires_cache_dir
from ..io.download import get_file as _verified_download
from ..utils import model_to_dot, plot_model  # noqa: F401


def get_file(fname=None, origin=None, file_hash=None, cache_subdir="datasets", cache_dir=None,
             md5_hash=None):
    """``keras.utils.get_file``: ``origin`` downloaded once to
    <cache>/<cache_subdir>/<fname> and its path returned. minires checks every
    download, so the file's MD5 (``file_hash`` or ``md5_hash``) is required."""
    md5 = md5_hash or file_hash
    if md5 is None or len(md5) != 32:
        raise ValueError(f"get_file({fname!r}): minires verifies every download; pass its MD5 "
                         "as file_hash= (32 hex digits; SHA-256 hashes are not supported)")
    if origin is None:
        raise ValueError(f"get_file({fname!r}): origin= (the URL) is required")
    fname = fname or os.path.basename(origin)
    path = os.path.join(cache_dir or minires_cache_dir(), cache_subdir, fname)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _verified_download(origin, md5, path)


__all__ = ["get_file", "img_to_array", "load_img", "model_to_dot", "plot_model", "set_random_seed"]

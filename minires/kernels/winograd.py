"""3x3 stride-1 convolution with Winograd's minimal filtering F(2x2, 3x3):
2.25x fewer multiplications than im2col, used by the inference fast path.

One dimension first. Two outputs of a 3-tap filter g over 4 inputs d,
    y0 = d0 g0 + d1 g1 + d2 g2,    y1 = d1 g0 + d2 g1 + d3 g2,
take 6 multiplications directly but only 4 as
    m1 = (d0 - d2) g0                 m2 = (d1 + d2) (g0 + g1 + g2) / 2
    m4 = (d1 - d3) g2                 m3 = (d2 - d1) (g0 - g1 + g2) / 2
    y0 = m1 + m2 + m3,                y1 = m2 - m3 - m4.
In matrices: y = A^T [(G g) * (B^T d)] with the B^T, G, A^T below. In 2-D
the same trick runs along rows and columns: a 4x4 input tile d and the 3x3
kernel give a 2x2 output tile
    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, 16 products).
Summed over input channels, the 16 elementwise products become 16 matrix
products: with V[k] (tiles, C) the transformed tiles and U[k] (C, F) the
transformed kernel, M[k] = V[k] @ U[k], and each output tile is A^T M A.
Tiles overlap by 2 (stride 2), so a tile is exactly im2col's 4x4 window at
stride 2: the NumPy code below builds them that way. The kernel transform
U is done once per model; the input and output transforms are cheap passes
(compiled by Numba when it is installed). Rounding: about 1e-7 relative in
float32, well inside the fast path's 1e-5.
"""
from ..backend import get_array_module
from ..padding import pad_2d
from .channelwise import add_relu_
from .slicing import im2col

B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))


def transform_kernel(kernel):
    """(3, 3, C, F) kernel -> U (16, C, F) = G g G^T for every (c, f)."""
    xp = get_array_module(kernel)
    g = xp.asarray(G, dtype=kernel.dtype)
    return xp.einsum("ai,ijcf,bj->abcf", g, kernel, g).reshape(16, *kernel.shape[2:])


def tile_counts(out_h, out_w):
    """2x2 output tiles covering an (out_h, out_w) output (odd sizes: one spare row/column)."""
    return -(-out_h // 2), -(-out_w // 2)


def input_tiles(x, pads, out_size):
    """x (N, H, W, C) unpadded, pads ((top, bottom), (left, right)) ->
    V (16, N*TH*TW, C) = B^T d B of every 4x4 tile d of the padded input."""
    xp = get_array_module(x)
    tiles_h, tiles_w = tile_counts(*out_size)
    (top, _), (left, _) = pads
    # zeros after the padding for an odd output size's spare row and column
    bottom = 2 * tiles_h + 2 - x.shape[1] - top
    right = 2 * tiles_w + 2 - x.shape[2] - left
    d = im2col(pad_2d(x, ((top, bottom), (left, right))), 4, 4, 2, 2)   # (N, TH, TW, 4, 4, C)
    b_t = xp.asarray(B_T, dtype=x.dtype)
    v = xp.einsum("ai,ntsijc,bj->abntsc", b_t, d, b_t)
    return xp.ascontiguousarray(v).reshape(16, -1, x.shape[3])


def output_tiles(m, bias, residual, relu, z):
    """M (16, N*TH*TW, F) -> z (N, OH, OW, F), written in place: A^T M A per
    tile, + bias [+ residual], then ReLU if ``relu`` (as channelwise.add_relu_)."""
    xp = get_array_module(m)
    batch, out_h, out_w, filters = z.shape
    tiles_h, tiles_w = tile_counts(out_h, out_w)
    a_t = xp.asarray(A_T, dtype=m.dtype)
    m = m.reshape(4, 4, batch, tiles_h, tiles_w, filters)
    y = xp.einsum("ia,abntsf,jb->ntisjf", a_t, m, a_t)              # (N, TH, 2, TW, 2, F)
    z[...] = y.reshape(batch, 2 * tiles_h, 2 * tiles_w, filters)[:, :out_h, :out_w]
    add_relu_(z, bias, residual, relu)

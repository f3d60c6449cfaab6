"""An independent float64 straight-line MambaVision, computed from a state dict with the published key names.

Written from the paper and the published weights' layout, deliberately sharing no code with ``mmmambavision.models``: windows
are cut with explicit slicing loops, LayerNorm / GELU / softmax / SiLU / softplus are spelt out, the depthwise
conv is a shifted sum and the selective scan is a sequential loop. Block types are read off the key names
(``mixer.qkv`` means attention), not from the depth rule the package implements.
"""
import math
import re

import torch
import torch.nn.functional as F


def _bn(x, sd, prefix, eps):
    mean, var = sd[prefix + 'running_mean'], sd[prefix + 'running_var']
    w, b = sd[prefix + 'weight'], sd[prefix + 'bias']
    return (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps) * w[:, None, None] + b[:, None, None]


def _layer_norm(x, w, b, eps=1e-5):  # over the last dim
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _silu(x):
    return x / (1 + torch.exp(-x))


def _softplus(x):
    return torch.where(x > 20, x, torch.log1p(torch.exp(x)))


def _linear(x, sd, prefix):
    y = x @ sd[prefix + 'weight'].T
    if prefix + 'bias' in sd:
        y = y + sd[prefix + 'bias']
    return y


def _depthwise_same(x, weight):
    """x (S, L, C), weight (C, 1, 3): out[l] = w0 * x[l-1] + w1 * x[l] + w2 * x[l+1], zeros outside."""
    padded = F.pad(x, (0, 0, 1, 1))
    w = weight[:, 0, :]
    return padded[:, :-2] * w[:, 0] + padded[:, 1:-1] * w[:, 1] + padded[:, 2:] * w[:, 2]


def _mixer(t, sd, p):
    seqs, length, dim = t.shape
    half = dim // 2
    xz = t @ sd[p + 'in_proj.weight'].T
    x, z = xz[..., :half], xz[..., half:]
    x = _silu(_depthwise_same(x, sd[p + 'conv1d_x.weight']))
    z = _silu(_depthwise_same(z, sd[p + 'conv1d_z.weight']))
    x_dbl = x @ sd[p + 'x_proj.weight'].T
    d_state = sd[p + 'A_log'].shape[1]
    rank = x_dbl.shape[-1] - 2 * d_state
    dt, Bm, Cm = x_dbl[..., :rank], x_dbl[..., rank:rank + d_state], x_dbl[..., rank + d_state:]
    delta = _softplus(dt @ sd[p + 'dt_proj.weight'].T + sd[p + 'dt_proj.bias'] + sd[p + 'dt_proj.bias'])
    A = -torch.exp(sd[p + 'A_log'])
    h = torch.zeros(seqs, half, d_state, dtype=t.dtype)
    ys = []
    for step in range(length):
        d = delta[:, step, :, None]
        h = torch.exp(d * A) * h + d * Bm[:, step, None, :] * x[:, step, :, None]
        ys.append((h * Cm[:, step, None, :]).sum(-1) + sd[p + 'D'] * x[:, step])
    y = torch.stack(ys, 1)
    return torch.cat([y, z], -1) @ sd[p + 'out_proj.weight'].T


def _attention(t, sd, p, num_heads):
    seqs, length, dim = t.shape
    hd = dim // num_heads
    qkv = _linear(t, sd, p + 'qkv.')
    q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    outs = []
    for head in range(num_heads):
        sl = slice(head * hd, (head + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)
        scores = torch.exp(scores - scores.max(-1, keepdim=True).values)
        outs.append(scores / scores.sum(-1, keepdim=True) @ v[..., sl])
    return _linear(torch.cat(outs, -1), sd, p + 'proj.')


def _cut_windows(x, wh, ww):
    batch, channels, height, width = x.shape
    seqs = []
    for b in range(batch):
        for r in range(height // wh):
            for c in range(width // ww):
                win = x[b, :, r * wh:(r + 1) * wh, c * ww:(c + 1) * ww]
                seqs.append(win.reshape(channels, wh * ww).T)  # token index = row * ww + col
    return torch.stack(seqs)


def _paste_windows(seqs, wh, ww, batch, channels, height, width):
    x = torch.zeros(batch, channels, height, width, dtype=seqs.dtype)
    i = 0
    for b in range(batch):
        for r in range(height // wh):
            for c in range(width // ww):
                x[b, :, r * wh:(r + 1) * wh, c * ww:(c + 1) * ww] = seqs[i].T.reshape(channels, wh, ww)
                i += 1
    return x


def num_blocks(sd, level):
    idx = {int(m.group(1)) for k in sd for m in [re.match(rf'levels\.{level}\.blocks\.(\d+)\.', k)] if m}
    return max(idx) + 1


def reference_forward(state_dict, x, num_heads, window_size, out_indices=(0, 1, 2, 3), differentiable=False):
    """float64 MambaVision stage features with outnorm applied, from a published-layout state dict.

    ``differentiable``: keep autograd's graph from ``x`` and the state dict's tensors (float64 leaves that require
    grad) to the outputs, for gradient references."""
    keep = (lambda t: t.double()) if differentiable else (lambda t: t.detach().double())
    sd = {k: keep(v) for k, v in state_dict.items()}
    x = keep(x)
    x = torch.relu(_bn(F.conv2d(x, sd['patch_embed.conv_down.0.weight'], stride=2, padding=1), sd,
                       'patch_embed.conv_down.1.', 1e-4))
    x = torch.relu(_bn(F.conv2d(x, sd['patch_embed.conv_down.3.weight'], stride=2, padding=1), sd,
                       'patch_embed.conv_down.4.', 1e-4))
    outs = []
    for i in range(4):
        for j in range(num_blocks(sd, i)):
            p = f'levels.{i}.blocks.{j}.'
            if i < 2:
                y = F.conv2d(x, sd[p + 'conv1.weight'], sd[p + 'conv1.bias'], padding=1)
                y = _gelu_tanh(_bn(y, sd, p + 'norm1.', 1e-5))
                y = _bn(F.conv2d(y, sd[p + 'conv2.weight'], sd[p + 'conv2.bias'], padding=1), sd, p + 'norm2.', 1e-5)
                if p + 'gamma' in sd:
                    y = y * sd[p + 'gamma'][:, None, None]
                x = x + y
        if i >= 2:
            batch, channels, height, width = x.shape
            if window_size[i] is None:  # one window over the whole map, no padding
                wh, ww = height, width
            else:
                wh = ww = window_size[i]
            ph, pw = math.ceil(height / wh) * wh, math.ceil(width / ww) * ww
            padded = torch.zeros(batch, channels, ph, pw, dtype=x.dtype)
            padded[:, :, :height, :width] = x
            t = _cut_windows(padded, wh, ww)
            for j in range(num_blocks(sd, i)):
                p = f'levels.{i}.blocks.{j}.'
                y = _layer_norm(t, sd[p + 'norm1.weight'], sd[p + 'norm1.bias'])
                if p + 'mixer.qkv.weight' in sd:
                    y = _attention(y, sd, p + 'mixer.', num_heads[i])
                else:
                    y = _mixer(y, sd, p + 'mixer.')
                t = t + y * sd.get(p + 'gamma_1', 1.)
                y = _layer_norm(t, sd[p + 'norm2.weight'], sd[p + 'norm2.bias'])
                y = _linear(_gelu_erf(_linear(y, sd, p + 'mlp.fc1.')), sd, p + 'mlp.fc2.')
                t = t + y * sd.get(p + 'gamma_2', 1.)
            x = _paste_windows(t, wh, ww, batch, channels, ph, pw)[:, :, :height, :width]
        if i in out_indices:
            out = _layer_norm(x.permute(0, 2, 3, 1), sd[f'outnorm{i}.weight'], sd[f'outnorm{i}.bias'])
            outs.append(out.permute(0, 3, 1, 2))
        if i < 3:
            x = F.conv2d(x, sd[f'levels.{i}.downsample.reduction.0.weight'], stride=2, padding=1)
    return outs

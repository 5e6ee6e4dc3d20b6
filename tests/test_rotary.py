"""Changing rotary theta in the config must change the frequencies actually used.

Models here use init.std 0.5: at 0.02 attention is near-uniform and rotary barely shows.
"""

from __future__ import annotations

import torch

from flexbert.model.attention.rotary import inverse_frequencies
from flexbert.model import FlexBertForMaskedLM
from tests.helpers import mixed_batch, tiny_config


def test_theta_comes_from_config_even_after_loading_old_weights():
    torch.manual_seed(0)
    phase1 = FlexBertForMaskedLM(tiny_config(**{"position.global_theta": 10000.0, "init.std": 0.5}))
    extended = FlexBertForMaskedLM(tiny_config(**{"position.global_theta": 160000.0, "init.std": 0.5}))
    extended.load_state_dict(phase1.state_dict())
    rotary = extended.model.position
    torch.testing.assert_close(rotary.inv_freq_global, inverse_frequencies(8, 160000.0))
    torch.testing.assert_close(rotary.inv_freq_local, inverse_frequencies(8, 10000.0))
    assert not any("inv_freq" in k for k in phase1.state_dict())  # never carried by checkpoints
    ids, mask = mixed_batch([40, 33])
    real = mask.bool()
    with torch.no_grad():
        assert not torch.allclose(phase1(ids, mask).logits[real], extended(ids, mask).logits[real],
                                  atol=1e-4)


def test_local_theta_only_touches_local_layers():
    """With every layer global, the local theta cannot matter; with local layers it must."""
    torch.manual_seed(0)
    ids, mask = mixed_batch([30])
    outputs = {}
    for window in (0, 6):
        for theta in (10000.0, 500.0):
            torch.manual_seed(0)
            model = FlexBertForMaskedLM(tiny_config(**{"position.local_theta": theta,
                                                       "attention.local_window": window,
                                                       "init.std": 0.5}))
            with torch.no_grad():
                outputs[window, theta] = model(ids, mask).logits
    torch.testing.assert_close(outputs[0, 10000.0], outputs[0, 500.0])
    assert not torch.allclose(outputs[6, 10000.0], outputs[6, 500.0], atol=1e-4)


def test_rotation_preserves_norm_and_depends_only_on_relative_position():
    cfg = tiny_config()
    rotary = FlexBertForMaskedLM(cfg).model.position
    q, k = torch.randn(2, 1, 4, 8).unbind(0)
    pos_a, pos_b = torch.tensor([3]), torch.tensor([10])
    qa, ka = rotary.rotate(q, k, rotary.prepare(pos_a), True)
    torch.testing.assert_close(qa.norm(dim=-1), q.norm(dim=-1))
    qb, _ = rotary.rotate(q, k, rotary.prepare(pos_a + 7), True)
    _, kb = rotary.rotate(q, k, rotary.prepare(pos_b + 7), True)
    _, ka2 = rotary.rotate(q, k, rotary.prepare(pos_b), True)
    torch.testing.assert_close((qa * ka2).sum(-1), (qb * kb).sum(-1), atol=1e-5, rtol=0)


def cast_buffers_like_fsdp_v1(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """What torch FSDP (v1) does with MixedPrecision(buffer_dtype=...) in the first forward:
    `_cast_buffers_to_dtype_and_device` sets `buffer.data = buffer.to(dtype)` for every floating
    buffer (torch/distributed/fsdp/_runtime_utils.py). Composer's DEFAULT and PURE mixed
    precision set buffer_dtype to bf16."""
    for buffer in model.buffers():
        if torch.is_floating_point(buffer):
            buffer.data = buffer.to(dtype=dtype)


def _phase_error(rotary, positions: torch.Tensor, theta: float, head_dim: int) -> float:
    """Largest |angle used - exact angle| (radians, wrapped) over the positions, global layers."""
    cos, sin = rotary.prepare(positions[None])[True]
    used = torch.atan2(sin[..., : head_dim // 2], cos[..., : head_dim // 2]).double().squeeze()
    exact = positions.double()[:, None] / theta ** (torch.arange(0, head_dim, 2).double() / head_dim)
    diff = torch.remainder(used - exact + torch.pi, 2 * torch.pi) - torch.pi
    return float(diff.abs().max())


def test_rope_angles_stay_float32_when_a_wrapper_casts_buffers_to_bf16():
    """Base shape (head dim 64), context-extension theta 160k: angles at 8192 within 1e-3 rad
    of the exact ones after FSDP v1 casts buffers (they were pi off with bf16 buffers)."""
    cfg = tiny_config(**{"hidden_size": 128, "attention.num_heads": 2,
                         "position.global_theta": 160000.0})
    model = FlexBertForMaskedLM(cfg)
    cast_buffers_like_fsdp_v1(model, torch.bfloat16)
    positions = torch.arange(8193)
    assert _phase_error(model.model.position, positions, 160000.0, 64) < 1e-3


def test_bf16_buffers_leave_the_outputs_unchanged():
    torch.manual_seed(0)
    cfg = tiny_config(**{"init.std": 0.5, "position.global_theta": 160000.0})
    reference = FlexBertForMaskedLM(cfg).eval()
    cast = FlexBertForMaskedLM(cfg).eval()
    cast.load_state_dict(reference.state_dict())
    cast_buffers_like_fsdp_v1(cast, torch.bfloat16)
    ids, mask = mixed_batch([300, 40])
    with torch.no_grad():
        assert torch.equal(reference(ids, mask).logits, cast(ids, mask).logits)

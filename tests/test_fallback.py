"""Without the compiled extension the package still imports (with one warning) and the reference
serves the same ops, registered the same way."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import warnings
    sys.modules["anm_fast._C"] = None  # as if the extension had failed to build: import fails
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import anm_fast
    import torch
    assert not anm_fast.has_extension()
    assert any("reference" in str(w.message) for w in caught), [str(w.message) for w in caught]
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    m = anm_fast.anm_mask(x, torch.randn(4, 8, 4, 4), torch.randint(0, 5, (4,)), torch.rand(4),
                          num_classes=5, seed=3)
    m.erased.sum().backward()
    assert x.grad is not None
    torch.library.opcheck(torch.ops.anm_fast.erase_and_modulate.default,
                          (x.detach().requires_grad_(), m.targets, m.box_max, m.box_min,
                           m.fill_max, m.fill_min, m.ratio, 1.0))
    f = torch.compile(lambda a, b: anm_fast.anm_mask(a, b, m.targets, torch.rand(4), seed=1).erased,
                      fullgraph=True)
    f(x.detach(), torch.randn(4, 8, 4, 4))
    print("OK", anm_fast.extension_error())
""")


def test_import_and_ops_without_extension():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout

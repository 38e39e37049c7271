import math

import pytest
import torch
from splat_helpers import orbit_cameras, random_scene

from anybudget.splat.cameras import Camera
from anybudget.splat.render import render
from anybudget.splat.render_ref import TILE, project, render_reference
from anybudget.splat.scene import GaussianScene
from anybudget.splat.sh import eval_sh, sh_colors


def naive_render(scene, cam, bg):
    """Pixel-by-pixel 3DGS forward loop (the CUDA kernel's logic written plainly)."""
    means2d, conics, depth, radii = project(scene, cam)
    cols = sh_colors(scene.sh_degree, scene.sh, scene.means, cam.position)
    op = scene.opacities
    order = [int(i) for i in torch.argsort(depth, stable=True) if radii[i] > 0]
    img = torch.zeros(cam.height, cam.width, 3)
    acc = torch.zeros(3, len(scene))
    for py in range(cam.height):
        for px in range(cam.width):
            tx, ty = px // TILE, py // TILE
            T, c = 1.0, torch.zeros(3)
            for j in order:
                m, r = means2d[j], float(radii[j])
                if not (math.floor((m[0] - r) / TILE) <= tx < math.ceil((m[0] + r) / TILE)
                        and math.floor((m[1] - r) / TILE) <= ty < math.ceil((m[1] + r) / TILE)):
                    continue
                dx, dy = px + 0.5 - m[0], py + 0.5 - m[1]
                a, b, cc = conics[j]
                power = -0.5 * (a * dx * dx + cc * dy * dy) - b * dx * dy
                if power > 0:
                    continue
                alpha = min(0.99, float(op[j] * torch.exp(power)))
                if alpha < 1 / 255:
                    continue
                if T * (1 - alpha) < 1e-4:
                    break
                c = c + cols[j] * alpha * T
                acc[0, j] += float(op[j]) * T
                acc[1, j] += alpha * T
                acc[2, j] += 1
                T = T * (1 - alpha)
            img[py, px] = c + T * bg
    return img, acc


@pytest.mark.parametrize("seed", [0, 1])
def test_tiled_renderer_equals_naive_loop(seed):
    with torch.no_grad():
        scene = random_scene(40, seed=seed, spread=0.5)
        scene.opacity_logits += 2.0  # dense enough that some pixels hit the T < 1e-4 stop
        cam = orbit_cameras(1, size=20, seed=seed)[0]
        bg = torch.tensor([0.2, 0.3, 0.4])
        out = render_reference(scene, cam, bg, stats=True, max_elements=5000)  # forces many chunks
        img, acc = naive_render(scene, cam, bg)
    assert torch.allclose(out.image, img, atol=1e-5)
    assert torch.allclose(out.opacity_t, acc[0], atol=1e-4)
    assert torch.allclose(out.alpha_t, acc[1], atol=1e-4)
    assert torch.equal(out.hits, acc[2])


def test_projection_of_isotropic_gaussian_on_axis():
    s, z, f = 0.1, 4.0, 50.0
    scene = GaussianScene(torch.tensor([[0.0, 0, 0]]), torch.full((1, 3), math.log(s)),
                          torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1), torch.zeros(1, 3), torch.zeros(1, 0, 3))
    w2c = torch.eye(4)
    w2c[2, 3] = z
    cam = Camera(w2c, f, f, 16, 12, 32, 24)
    m2, conic, depth, radii = project(scene, cam)
    var = (f * s / z) ** 2 + 0.3
    assert torch.allclose(m2, torch.tensor([[16.0, 12.0]]))
    assert torch.allclose(conic, torch.tensor([[1 / var, 0.0, 1 / var]]), rtol=1e-5)
    assert depth.item() == z and radii.item() == math.ceil(3 * math.sqrt(var))
    w2c[2, 3] = 0.1  # closer than the near plane: culled, renders background only
    out = render_reference(scene, Camera(w2c, f, f, 16, 12, 32, 24), background=(1, 1, 1))
    assert torch.all(out.image == 1) and out.radii.item() == 0


def test_sh_basis_is_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200_000, 3, generator=g), dim=-1)
    ys = torch.stack([eval_sh(3, torch.eye(16)[i].expand(len(d), 16)[..., None].expand(-1, -1, 3).contiguous(), d)[:, 0]
                      for i in range(16)], dim=1)
    gram = ys.T @ ys / len(d) * 4 * math.pi
    assert torch.allclose(gram, torch.eye(16), atol=0.03)


def test_gradients_match_finite_differences():
    scene = random_scene(30, seed=4)
    cam = orbit_cameras(1, size=16)[0]
    target = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(1))
    params = scene.detach()
    for name in ("means", "log_scales", "sh_dc", "opacity_logits", "quats", "sh_rest"):
        getattr(params, name).requires_grad_(True)

    def loss(s):
        return ((render_reference(s, cam).image - target) ** 2).sum()

    loss(params).backward()
    for name in ("sh_dc", "opacity_logits", "means"):
        g = getattr(params, name).grad.flatten()
        i = int(torch.argmax(g.abs()))
        eps = 1e-3
        plus, minus = params.detach(), params.detach()
        getattr(plus, name).view(-1)[i] += eps
        getattr(minus, name).view(-1)[i] -= eps
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        assert fd.item() == pytest.approx(g[i].item(), rel=0.05, abs=1e-3), name
    for name in ("log_scales", "quats", "sh_rest"):
        assert torch.isfinite(getattr(params, name).grad).all() and getattr(params, name).grad.abs().sum() > 0


def test_render_dispatch_on_cpu_uses_reference():
    scene, cam = random_scene(10), orbit_cameras(1, size=16)[0]
    assert torch.equal(render(scene, cam).image, render_reference(scene, cam).image)
    with pytest.raises(ValueError, match="backend='cuda'"):
        render(scene, cam, backend="cuda")


def test_non_finite_gaussians_are_culled_not_crashing():
    """Gaussians whose covariance overflows (huge scales, as a trained outdoor scene can hold) are
    culled with radius 0 instead of producing undefined tile indices; the rest renders unchanged."""
    with torch.no_grad():
        scene = random_scene(30, seed=3, spread=0.5)
        cam = orbit_cameras(1, size=20, seed=3)[0]
        bad = torch.tensor([2, 7, 11])
        broken = GaussianScene(scene.means.clone(), scene.log_scales.clone(), scene.quats, scene.opacity_logits,
                               scene.sh_dc, scene.sh_rest, scene.normals)
        broken.log_scales[bad[:2]] = 60.0  # exp(60)^2 overflows float32: infinite covariance
        broken.means[bad[2], 0] = float("nan")
        out = render_reference(broken, cam, background=(0.1, 0.2, 0.3), stats=True)
        keep = torch.ones(len(scene), dtype=torch.bool)
        keep[bad] = False
        ref = render_reference(scene.subset(keep), cam, background=(0.1, 0.2, 0.3))
    assert torch.all(out.radii[bad] == 0) and torch.all(out.hits[bad] == 0)
    assert torch.allclose(out.image, ref.image, atol=1e-6)


def test_scene_with_fewer_tile_pairs_than_gaussians():
    """Most Gaussians culled (behind the camera): fewer (tile, Gaussian) pairs than Gaussians, the
    case of a large trained scene seen from one view; renders like the scene of the visible ones."""
    with torch.no_grad():
        scene = random_scene(40, seed=5, spread=0.5)
        cam = orbit_cameras(1, size=16, seed=5)[0]
        behind = torch.arange(40) >= 4
        eye = cam.position
        scene.means[behind] = eye + 10 * (eye - scene.means[behind].mean(0))  # far behind the camera
        out = render_reference(scene, cam, background=(0.1, 0.2, 0.3), stats=True)
        ref = render_reference(scene.subset(~behind), cam, background=(0.1, 0.2, 0.3))
    assert int((out.radii > 0).sum()) <= 4
    assert torch.all(out.hits[behind] == 0)
    assert torch.allclose(out.image, ref.image, atol=1e-6)

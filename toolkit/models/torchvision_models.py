"""torchvision classification networks, randomly initialised, sized for small inputs.

No weights are downloaded. The first convolution is rebuilt for ``in_channels`` so the
networks also run on 1×28×28 images; their adaptive pooling accepts any image size ≥ 28.
"""

from __future__ import annotations

from torch import nn

from toolkit.models._registry import MODELS


def _first_conv_for(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


@MODELS.register("resnet18")
def resnet18(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """torchvision ResNet-18 with ``in_channels`` input channels and random weights."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = _first_conv_for(model.conv1, in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model


@MODELS.register("mobilenet_v3_small")
def mobilenet_v3_small(
    in_channels: int = 1, num_classes: int = 10, image_size: int = 28
) -> nn.Module:
    """torchvision MobileNetV3-Small with ``in_channels`` input channels and random weights."""
    from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small

    model = tv_mobilenet_v3_small(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features[0][0] = _first_conv_for(model.features[0][0], in_channels)
    model.input_shape = (in_channels, image_size, image_size)
    return model

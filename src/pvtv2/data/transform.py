"""The base class of this package's own ``torchvision.transforms.v2`` transforms, on every supported torchvision."""

from __future__ import annotations

from typing import Any

from torchvision.transforms import v2


class Transform(v2.Transform):
    """``v2.Transform`` overridden through its public names, ``make_params`` and ``transform`` (torchvision >= 0.21);
    before 0.21 torchvision calls them ``_get_params`` and ``_transform``, which this class forwards."""

    def _get_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self.make_params(flat_inputs)

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self.transform(inpt, params)

"""An optimiser-wrapper constructor that keeps mmengine's param-wise settings but not its one group per parameter.

With a ``paramwise_cfg`` (our configs: no weight decay on norms, ``A_log``, ``D``, layer scales),
``DefaultOptimWrapperConstructor`` gives every parameter its own param group. PyTorch's AdamW then runs its
multi-tensor (foreach) update once per group, a handful of kernel launches per parameter: for a Cascade Mask R-CNN
(~700 parameter tensors) that is thousands of launches and Python iterations in every optimiser step. Here the
groups that end up with identical settings are merged, so each update is a few multi-tensor launches; every
parameter keeps exactly the lr, weight decay (and any other option) the default constructor gives it.
"""
from typing import List

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MergedGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor``, then parameters with equal group settings share one param group.

    Use in a config as ``optim_wrapper = dict(..., constructor='MergedGroupsOptimWrapperConstructor')``. Groups
    keep the order in which their first parameter appears. Checkpoints of the optimiser are not interchangeable
    with the default constructor's (a different number of groups).
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', is_dcn_module=None) -> None:
        super().add_params(params, module, prefix=prefix, is_dcn_module=is_dcn_module)
        if prefix:  # the recursion into children: merge once, at the top
            return
        merged = {}
        for group in params:
            settings = tuple(sorted((key, value) for key, value in group.items() if key != 'params'))
            if settings not in merged:
                merged[settings] = dict(group, params=[])
            merged[settings]['params'].extend(group['params'])
        params[:] = list(merged.values())

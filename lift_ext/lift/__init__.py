"""LiFT: SGLD-Gibbs posterior sampling of a shared adapter prior, an online Gaussian mixture
over its samples, and meta-test adaptation under that mixture prior (DESIGN.md sections 3-5).

    SGLDGibbs   the sampler on flat vectors with a user-supplied gradient (no nn.Module needed)
    FlatParams  a module's adapter tensors packed into one float32 vector (params become views)
    LiFT        meta-training of a model's adapter over tasks (SGLDGibbs on FlatParams)
    adapt       meta-test adaptation under the learned mixture prior (MAP or SGLD)
"""
from lift_ext.lift.adapt import Adapted, adapt, average_predictions
from lift_ext.lift.flat import FlatParams
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.sampler import SGLDGibbs, mean_loss_grad
from lift_ext.lift.tasks import Task, TensorTask
from lift_ext.lift.trainer import LiFT

__all__ = ["SGLDGibbs", "mean_loss_grad", "FlatParams", "MixturePrior", "LiFT", "Task", "TensorTask", "adapt", "Adapted",
           "average_predictions"]

"""What a `SGLDGibbs` chain lets its users read: its settings as the step uses them, its state
(the live buffers, documented per property) and its diagnostics. A mixin of SGLDGibbs (the
attributes it reads are the chain's own)."""
from typing import Dict, Optional

import torch


class ChainReadout:
    """The read-only views of SGLDGibbs (and so of ShardedSGLDGibbs)."""

    # ---- settings ---------------------------------------------------------------------------
    @property
    def _warmup_steps(self) -> int:
        return self.hierarchy.warmup_steps if self._mixture else 0

    @property
    def _shift_lr(self) -> float:
        return self.hierarchy.shift_lr if self._mixture else 0.0

    @property
    def _likelihood_z(self) -> bool:
        return self._mixture and self.hierarchy.z_update == "likelihood"

    @property
    def _phi_lr(self) -> float:
        """The Langevin phi step's size (paper hierarchy with phi_update 'langevin'); unused by the exact draws."""
        lr_phi = None if self._mixture else self.hierarchy.lr_phi
        return self.langevin.lr if lr_phi is None else lr_phi

    @property
    def _gibbs_phi(self) -> bool:
        return self._mixture or self.hierarchy.phi_update == "gibbs"

    # ---- state ----------------------------------------------------------------------------
    @property
    def phi(self) -> torch.Tensor:
        """The shared prior mean phi [D] of PaperHierarchy (the live buffer: clone it to keep a sample)."""
        if self._mixture:
            raise AttributeError("a MixtureHierarchy chain has no single phi: read phis [K, D] "
                                 "(with assignments and weights) or meta_test_prior()")
        return self._components.phis[0]

    @property
    def phis(self) -> torch.Tensor:
        """The shared adapters phi_k [K, D] (the live buffer; [1, D] for PaperHierarchy)."""
        return self._components.phis

    @property
    def assignments(self) -> torch.Tensor:
        """z [N] int64 on the CPU: the component of each task (all 0 for PaperHierarchy)."""
        return self._components.assignments.clone()

    @property
    def weights(self) -> torch.Tensor:
        """pi [K] float64 on the CPU: the current draw of the component weights."""
        return self._components.weights.clone()

    @property
    def thetas(self) -> torch.Tensor:
        """All task vectors [N, D] (the live buffer)."""
        return self._thetas

    @property
    def task_sums(self) -> torch.Tensor:
        """S_k = sum of theta_i over the tasks of component k [K, D] (the live buffer; [1, D]
        for PaperHierarchy), kept up to date by the theta step and the z draws."""
        return self._components.sums

    @property
    def task_sum(self) -> torch.Tensor:
        """S = sum_i theta_i [D] of PaperHierarchy (the live buffer); see `task_sums`."""
        if self._mixture:
            raise AttributeError("a MixtureHierarchy chain keeps one sum per component: read task_sums [K, D]")
        return self._components.sums[0]

    @property
    def prior_mean(self) -> Optional[torch.Tensor]:
        """mu0 [D], or None for 0."""
        return self._prior_mean

    @property
    def device(self) -> torch.device:
        return self._thetas.device

    @property
    def num_gmm_samples(self) -> int:
        """phi samples fed to the OnlineGMM so far: (steps - burn_in) // thin, 0 before burn-in
        (always 0 for MixtureHierarchy, which has no OnlineGMM)."""
        return 0 if self.gmm is None else max(0, self.step_count - self.hierarchy.burn_in) // self.hierarchy.thin

    @property
    def square_avg(self) -> Optional[torch.Tensor]:
        """The shared running average of squared task gradients v [D] (None without
        preconditioning)."""
        return self._square_avg

    @property
    def damping(self) -> float:
        """eps' = max(eps, lr / beta^2), the preconditioner's damping (module docstring)."""
        return max(self.langevin.eps, self.langevin.lr / self.hierarchy.beta**2)

    def diagnostics(self) -> Dict[str, float]:
        """RMS of the phis, RMS spread of the thetas around their phi_{z_i}, OnlineGMM samples, components used."""
        comps = self._components
        centers = comps.phis.index_select(0, comps.assignments.to(self.device))
        out = {"phi_rms": float(comps.phis.pow(2).mean().sqrt()),
               "theta_spread": float((self._thetas - centers).pow(2).mean().sqrt()),
               "gmm_samples": float(self.num_gmm_samples)}
        if self._mixture:
            out["components_used"] = float(sum(n > 0 for n in comps.counts))
        return out

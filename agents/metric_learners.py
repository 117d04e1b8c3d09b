"""Metric-based few-shot classifiers: adaptation is a closed-form function of the embedded
support set, so there are no inner gradient steps.

- Prototypical Networks (Snell et al. 2017): prototypes = class means of the support
  embeddings; logits = -squared Euclidean distance of a query embedding to each prototype.
- Matching Networks (Vinyals et al. 2016), without full-context embeddings: attention
  softmax(temperature * cosine(query, support)) over the support set, summed per label.
- Relation Networks (Sung et al. 2018): a learned relation module scores each (class
  embedding, query embedding) pair in [0, 1], trained by MSE against the one-hot label; the
  class embedding is the sum of its support embeddings.
Embeddings come from the Conv4 of agents/fewshot_nets.py, with batch statistics per task.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.config import option
from metarl.errors import UserError
from metarl.fewshot.core import Batch, FewShotConfig, FewShotLearner, load_learner, make_trainer_cls
from metarl.protocols import FEWSHOT
from metarl.training import AgentSpec

from metarl.agents.fewshot_nets import Conv4


@dataclass
class MetricConfig(FewShotConfig):
    iterations: int = option(20_000, "meta-iterations (episodes batches) to train for", ge=1)
    meta_batch: int = option(4, "tasks (episodes) per meta-iteration", ge=1)
    channels: int = option(64, "Conv4 channels per block (papers: 64)", ge=1)
    temperature: float = option(10.0, "Matching Networks: scale of the cosine similarities before the softmax "
                                      "(1 = the paper's raw cosine; 10 trains faster)", gt=0.0)
    relation_hidden: int = option(8, "Relation Networks: hidden units of the relation module (paper: 8)", ge=1)


def class_sums(emb: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task sums and counts of embeddings by label: emb [N, S, D], labels [N, S] ->
    sums [N, ways, D], counts [N, ways, 1]."""
    onehot = F.one_hot(labels, ways).to(emb.dtype)                    # [N, S, W]
    return onehot.transpose(1, 2) @ emb, onehot.sum(1).unsqueeze(-1)


def _ways(ys: torch.Tensor) -> int:
    """Classes in a task batch (labels 0..W-1): meta-training may use more ways than testing."""
    return int(ys.max()) + 1


class _Metric(FewShotLearner):
    def __init__(self, dist, cfg: MetricConfig):
        super().__init__(dist)
        if dist.kind != "classification":
            raise UserError(f"agent {self.name} is a classifier: use it on glyphs or omniglot, not regression")
        self.cfg, self.ways = cfg, dist.ways
        self.embed = Conv4(dist.x_shape[0], cfg.channels)


class ProtoNet(_Metric):
    name = "protonet"

    def adapt(self, xs, ys, steps=None):
        sums, counts = class_sums(self.embed(xs), ys, _ways(ys))
        return sums / counts.clamp(min=1)                              # prototypes [N, W, D]

    def predict(self, protos, xq):
        return -torch.cdist(self.embed(xq), protos) ** 2               # logits [N, Q, W]


class MatchingNet(_Metric):
    name = "matching-net"

    def adapt(self, xs, ys, steps=None):
        return F.normalize(self.embed(xs), dim=-1), F.one_hot(ys, _ways(ys)).float()

    def predict(self, state, xq):
        support, onehot = state
        attn = torch.softmax(self.cfg.temperature * F.normalize(self.embed(xq), dim=-1) @ support.transpose(1, 2), -1)
        return torch.log((attn @ onehot).clamp(min=1e-8))              # log-probabilities [N, Q, W]


class RelationNet(_Metric):
    name = "relation-net"

    def __init__(self, dist, cfg):
        super().__init__(dist, cfg)
        d = self.embed.features
        self.relation = nn.Sequential(nn.Linear(2 * d, cfg.relation_hidden), nn.ReLU(),
                                      nn.Linear(cfg.relation_hidden, 1))

    def adapt(self, xs, ys, steps=None):
        return class_sums(self.embed(xs), ys, _ways(ys))[0]           # [N, W, D]

    def predict(self, classes, xq):
        q = self.embed(xq)                                             # [N, Q, D]
        pairs = torch.cat([classes.unsqueeze(1).expand(-1, q.shape[1], -1, -1),
                           q.unsqueeze(2).expand(-1, -1, classes.shape[1], -1)], -1)
        return self.relation(pairs).squeeze(-1)                        # relation logits [N, Q, W]

    def meta_loss(self, batch: Batch):
        logits = self.predict(self.adapt(batch["xs"], batch["ys"]), batch["xq"])
        target = F.one_hot(batch["yq"], logits.shape[-1]).float()
        loss = F.mse_loss(torch.sigmoid(logits), target)
        acc = (logits.argmax(-1) == batch["yq"]).float().mean().item()
        return loss, {"loss": loss.item(), "accuracy": acc}


def _spec(name, cls):
    return AgentSpec(name, MetricConfig, make_trainer_cls(cls), load_learner(cls), protocol=FEWSHOT,
                     curve_keys=("loss", "accuracy"))


PROTONET = _spec("protonet", ProtoNet)
MATCHING_NET = _spec("matching-net", MatchingNet)
RELATION_NET = _spec("relation-net", RelationNet)

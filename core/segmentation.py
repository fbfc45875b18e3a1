"""Self-segmentation (Alaluf et al. 2024, sec. 4.3, after Patashnik et al. 2023): pixels whose
self-attention looks alike belong together. k-means clusters the rows of the head-averaged
self-attention map of the finest grid; a cluster is the object when its pixels attend to the
prompt's noun (cross-attention of the next coarser grid, upsampled) clearly more than the other
clusters do. As the paper's code: k = 5, the best of 10 k-means++ initialisations by inertia."""
import math

import torch


def kmeans(points: torch.Tensor, k: int, inits: int = 10, iterations: int = 300, seed: int = 0) -> torch.Tensor:
    """Labels (N,) of the lowest-inertia clustering of `points` (N, D) among `inits` runs of
    Lloyd's algorithm, each from a greedy k-means++ seeding (2 + int(ln k) candidates a centre,
    the one that lowers the potential most kept)."""
    generator = torch.Generator().manual_seed(seed)
    points = points.double()
    k = min(k, points.shape[0])
    best, best_inertia = None, math.inf
    for _ in range(inits):
        labels, inertia = _lloyd(points, _seeding(points, k, generator), iterations)
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _seeding(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    trials = 2 + int(math.log(k))
    centers = [points[int(torch.randint(points.shape[0], (1,), generator=generator))]]
    closest = ((points - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        if float(closest.sum()) == 0.0:
            break
        candidates = torch.multinomial(closest / closest.sum(), trials, replacement=True, generator=generator)
        distances = torch.minimum(closest[None], torch.cdist(points[candidates], points) ** 2)
        chosen = int(distances.sum(1).argmin())
        centers.append(points[candidates[chosen]])
        closest = distances[chosen]
    return torch.stack(centers)


def _lloyd(points: torch.Tensor, centers: torch.Tensor, iterations: int) -> tuple:
    labels = torch.cdist(points, centers).argmin(dim=1)
    for _ in range(iterations):
        sums = torch.zeros_like(centers).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=centers.shape[0]).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
        new_labels = torch.cdist(points, centers).argmin(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = float(((points - centers[labels]) ** 2).sum())
    return labels, inertia


def upsample(word_map: torch.Tensor, scale: int, grid: tuple) -> torch.Tensor:
    """A coarser grid's map (h', w') on the finer `grid` (h, w), each value repeated scale x scale
    (the paper's code: 2x by repetition), cut to the grid; flattened row-major."""
    fine = word_map.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return fine[:grid[0], :grid[1]].flatten()


def object_clusters(labels: torch.Tensor, word_attention: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean per cluster, by the paper's rule (after Patashnik et al. 2023): the noun's
    attention map is normalised to (w - |min w|) / max w, each cluster scores the mean of it
    over its pixels, and a cluster is the object when its score exceeds `ratio` times the mean
    score of the clusters other than the best one. The best cluster always counts, so the
    mask is never empty (the paper's code can give an empty mask, which its AdaIN turns to NaN)."""
    labels = labels.cpu()
    w = word_attention.float().cpu()
    w = (w - w.min().abs()) / w.max() if float(w.max()) > 0 else torch.zeros_like(w)
    clusters = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=clusters)
    score = torch.zeros(clusters).index_add_(0, labels, w) / counts.clamp(min=1)
    best = int(torch.where(counts > 0, score, torch.full_like(score, -float("inf"))).argmax())
    others = (counts > 0) & (torch.arange(clusters) != best)
    chosen = (score > ratio * score[others].mean()) & (counts > 0) if bool(others.any()) else counts > 0
    chosen[best] = True
    return chosen


def self_segmentation(self_attention: torch.Tensor, word_attention: torch.Tensor, clusters: int = 5,
                      ratio: float = 1.4, seed: int = 0) -> torch.Tensor:
    """Object mask (N,) in {0, 1} from a head-averaged self-attention map (N, N) and each
    pixel's attention to the noun (N,), on the same grid."""
    labels = kmeans(self_attention, clusters, seed=seed)
    return object_clusters(labels, word_attention, ratio)[labels.cpu()].float()

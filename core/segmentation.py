"""Self-segmentation (Alaluf et al. 2024, sec. 4.3, after Patashnik et al. 2023): pixels whose
self-attention looks alike belong together. k-means clusters the rows of the head-averaged
self-attention map; a cluster is the object when its pixels attend to the prompt's noun
(cross-attention) clearly more than the other clusters do."""
import torch


def kmeans(points: torch.Tensor, k: int, iterations: int = 30, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of `points` (N, D) with k-means++ seeding; returns labels (N,)."""
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    n = points.shape[0]
    k = min(k, n)
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [points[first]]
    for _ in range(1, k):
        distance = torch.cdist(points, torch.stack(centers)).min(dim=1).values ** 2
        if float(distance.sum()) == 0.0:
            break
        centers.append(points[int(torch.multinomial(distance.cpu() / distance.sum().cpu(), 1, generator=generator))])
    centers = torch.stack(centers)
    labels = torch.cdist(points, centers).argmin(dim=1)
    for _ in range(iterations):
        sums = torch.zeros_like(centers).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=centers.shape[0]).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
        new_labels = torch.cdist(points, centers).argmin(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def object_clusters(labels: torch.Tensor, word_attention: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean per cluster, by the paper's rule (after Patashnik et al. 2023): the noun's
    attention map is normalised to (w - |min w|) / max w, each cluster scores the mean of it
    over its pixels, and a cluster is the object when its score exceeds `ratio` times the mean
    score of the clusters other than the best one. The best cluster always counts, so the
    mask is never empty."""
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
    pixel's attention to the noun (N,)."""
    labels = kmeans(self_attention, clusters, seed=seed)
    return object_clusters(labels, word_attention, ratio)[labels.cpu()].float()

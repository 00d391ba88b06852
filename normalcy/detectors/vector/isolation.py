"""Grow a whole isolation forest at once with numpy, level by level, as flat node arrays.

The algorithm is Liu et al.'s (and scikit-learn's `IsolationForest` with `ExtraTreeRegressor(max_features=1)`):
each tree sees `max_samples` rows drawn without replacement; a node splits on a feature drawn uniformly among
the features that are not constant in that node, at a threshold drawn uniformly between the node's min and max
(`x <= t` goes left), until it holds one row or reaches depth ceil(log2(max_samples)). Instead of one Python
call per tree, every node of every tree at the same depth is split in one vectorized step, which makes fitting
~50-100x faster than scikit-learn's per-tree loop. The output has the layout `iforest.forest_path_lengths`
scores (leaves point to themselves; a leaf's value is its depth + c(n_leaf)).
"""

from __future__ import annotations

import math

import numpy as np

_REDRAWS = 4  # rounds of drawing one random feature per node before looking at all features of the rest


def _draw_split_features(
    Xf: np.ndarray, rows: np.ndarray, starts: np.ndarray, allowed: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each node (rows grouped contiguously from `starts`): a feature drawn uniformly among its allowed
    features that are not constant in the node, and that feature's min and max there (min == max: none).

    Rejection sampling: draw one allowed feature per node and look only at that column (cheap); nodes whose
    draw was constant draw again, and after a few rounds the remaining nodes look at all columns at once."""
    n_nodes = starts.size
    if allowed is None:
        allowed = np.ones((n_nodes, Xf.shape[1]), dtype=bool)
    seg = np.repeat(np.arange(n_nodes), np.diff(np.append(starts, rows.size)))
    f = np.empty(n_nodes, dtype=np.int64)
    lo, hi = np.zeros(n_nodes), np.zeros(n_nodes)
    todo = np.arange(n_nodes)
    for _ in range(_REDRAWS):
        f[todo] = _random_allowed(allowed[todo], rng)
        col = Xf[rows, f[seg]].astype(np.float64)
        lo_all, hi_all = np.minimum.reduceat(col, starts), np.maximum.reduceat(col, starts)
        lo[todo], hi[todo] = lo_all[todo], hi_all[todo]
        todo = todo[hi[todo] <= lo[todo]]
        if todo.size == 0:
            return f, lo, hi
    keep = np.isin(seg, todo)  # the stubborn nodes: all their columns at once
    sub_rows, sub_seg = rows[keep], seg[keep]
    sub_starts = np.flatnonzero(np.r_[True, sub_seg[1:] != sub_seg[:-1]])
    vals = Xf[sub_rows].astype(np.float64)
    lo_m, hi_m = np.minimum.reduceat(vals, sub_starts, axis=0), np.maximum.reduceat(vals, sub_starts, axis=0)
    usable = (hi_m > lo_m) & allowed[todo]
    draw = np.where(usable, rng.random(usable.shape), -1.0)
    pick = draw.argmax(axis=1)
    idx = np.arange(todo.size)
    f[todo] = pick
    lo[todo] = np.where(usable.any(axis=1), lo_m[idx, pick], 0.0)
    hi[todo] = np.where(usable.any(axis=1), hi_m[idx, pick], 0.0)
    return f, lo, hi


def _random_allowed(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One feature per row of the boolean `allowed` matrix, uniformly among its True entries."""
    if allowed.all():
        return rng.integers(0, allowed.shape[1], allowed.shape[0])
    return np.where(allowed, rng.random(allowed.shape), -1.0).argmax(axis=1)


def _subsamples(n: int, n_sub: int, n_trees: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of every tree's sample (without replacement), concatenated tree after tree."""
    if n_sub == n:  # every tree sees every row; order inside a tree does not matter
        return np.tile(np.arange(n), n_trees)
    if n <= 64 * n_sub:
        return np.argpartition(rng.random((n_trees, n)), n_sub - 1, axis=1)[:, :n_sub].ravel()
    return np.concatenate([rng.choice(n, n_sub, replace=False) for _ in range(n_trees)])


def grow_forest(
    X: np.ndarray, n_trees: int, n_sub: int, n_features_per_tree: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], int]:
    """Flat node arrays (feature, threshold, left, right, leaf_value, roots) of `n_trees` isolation trees and
    the depth limit used. Thresholds are computed on float32 copies of X (as scikit-learn's trees do)."""
    from normalcy.detectors.vector.iforest import average_path_length

    Xf = np.ascontiguousarray(X, dtype=np.float32)
    n, d = Xf.shape
    max_depth = max(1, math.ceil(math.log2(max(n_sub, 2))))
    allowed = None  # which features each tree may split on (None: all)
    if n_features_per_tree < d:
        allowed = np.zeros((n_trees, d), dtype=bool)
        for t in range(n_trees):
            allowed[t, rng.choice(d, n_features_per_tree, replace=False)] = True
    rows = _subsamples(n, n_sub, n_trees, rng)
    node_of = np.repeat(np.arange(n_trees), n_sub)  # entry -> node id; roots are 0..n_trees-1
    tree_of_node = [np.arange(n_trees)]
    feature, threshold, left, right, size, depth = ([] for _ in range(6))
    level_ids = np.arange(n_trees)
    level_size = np.full(n_trees, n_sub)
    next_id = n_trees
    for level in range(max_depth + 1):
        m = level_ids.size
        f_lvl, t_lvl = np.zeros(m, dtype=np.int64), np.zeros(m)
        l_lvl, r_lvl = level_ids.copy(), level_ids.copy()  # leaves point to themselves
        split = level_size >= 2
        if level < max_depth and split.any():
            active = split[np.searchsorted(level_ids, node_of)]
            ent_rows, ent_nodes = rows[active], node_of[active]
            order = np.argsort(ent_nodes, kind="stable")
            ent_rows, ent_nodes = ent_rows[order], ent_nodes[order]
            seg_nodes, starts = np.unique(ent_nodes, return_index=True)
            pos = np.searchsorted(level_ids, seg_nodes)  # position of each splitting node in this level
            node_allowed = None if allowed is None else allowed[tree_of_node[-1][pos]]
            f, a, b = _draw_split_features(Xf, ent_rows, starts, node_allowed, rng)
            can = b > a
            t = a + rng.random(f.size) * (b - a)
            t = np.where(t >= b, a, t)  # as scikit-learn: a draw equal to the max falls back to the min
            pos, f, t = pos[can], f[can], t[can]
            n_split = pos.size
            f_lvl[pos], t_lvl[pos] = f, t
            l_lvl[pos] = next_id + 2 * np.arange(n_split)
            r_lvl[pos] = l_lvl[pos] + 1
            # route the entries of split nodes to their children
            node_pos = np.searchsorted(level_ids, ent_nodes)
            split_here = np.zeros(m, dtype=bool)
            split_here[pos] = True
            moving = split_here[node_pos]
            mv_rows, mv_pos = ent_rows[moving], node_pos[moving]
            go_left = Xf[mv_rows, f_lvl[mv_pos]] <= t_lvl[mv_pos]
            child = np.where(go_left, l_lvl[mv_pos], r_lvl[mv_pos])
            counts = np.bincount(child - next_id, minlength=2 * n_split)
            rows, node_of = mv_rows, child
            children_tree = np.repeat(tree_of_node[-1][pos], 2)
            next_level_ids = next_id + np.arange(2 * n_split)
            next_id += 2 * n_split
        else:
            next_level_ids, counts, children_tree = np.empty(0, np.int64), np.empty(0, np.int64), None
        feature.append(f_lvl)
        threshold.append(t_lvl)
        left.append(l_lvl)
        right.append(r_lvl)
        size.append(level_size)
        depth.append(np.full(m, level, dtype=np.float64))
        if next_level_ids.size == 0:
            break
        level_ids, level_size = next_level_ids, counts
        tree_of_node.append(children_tree)
    left_all, right_all = np.concatenate(left), np.concatenate(right)
    ids = np.arange(left_all.size)
    is_leaf = left_all == ids
    value = np.concatenate(depth) + average_path_length(np.concatenate(size))
    flat = {
        "feature": np.concatenate(feature).astype(np.int64),
        "threshold": np.concatenate(threshold),
        "left": left_all.astype(np.int64),
        "right": right_all.astype(np.int64),
        "leaf_value": np.where(is_leaf, value, 0.0),
        "roots": np.arange(n_trees, dtype=np.int64),
    }
    return flat, max_depth

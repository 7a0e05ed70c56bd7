"""Compiled loops over graphs of grid cells: sums over a cell graph's edges and the Felzenszwalb-Huttenlocher merge
(``ov3d_ros.superpoints``), and connected components within one label (``ov3d_ros.nodes.objects``).
Module-level numba functions, so their machine code is cached on disk (``cache=True``) and a new process loads it
instead of compiling again.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def neighbour_sums(own, a, b):
    """``own`` (n, C) plus, for every edge (a[e], b[e]), the other end's row: each cell's values summed over itself
    and its neighbours. The additions run in the order ``np.bincount`` makes them, so the sums are the same bits."""
    n, columns = own.shape
    from_a = np.zeros((n, columns))
    from_b = np.zeros((n, columns))
    for e in range(len(a)):
        i, j = a[e], b[e]
        for c in range(columns):
            from_a[i, c] += own[j, c]
            from_b[j, c] += own[i, c]
    return own + (from_a + from_b)


@numba.njit(cache=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@numba.njit(cache=True)
def fh_segment(n, a, b, w, order, k, min_size):
    """Root cell of every cell after merging the edges (a, b) of weight ``w`` in ``order`` (increasing weight):
    two components merge when the edge is no heavier than either one's largest inner weight + k / size; then
    components under ``min_size`` cells merge into a neighbour."""
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    threshold = np.full(n, k)
    for e in order:
        ra = _find(parent, a[e])
        rb = _find(parent, b[e])
        if ra == rb:
            continue
        if w[e] <= threshold[ra] and w[e] <= threshold[rb]:
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            # edges come in increasing weight, so w[e] is the largest inside the merged component
            threshold[ra] = w[e] + k / size[ra]
    for e in order:
        ra = _find(parent, a[e])
        rb = _find(parent, b[e])
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = _find(parent, i)
    return out


@numba.njit(cache=True)
def label_components(node_ptr, node_label, a, b):
    """Connected components of (cell, label) nodes: node ``n`` of cell ``c`` is one of
    ``node_ptr[c]:node_ptr[c + 1]``, with label ``node_label[n]``; for every pair of adjacent cells (a[e], b[e]) the
    nodes of one label are joined. Returns each node's root node (equal roots: one component)."""
    parent = np.arange(len(node_label))
    for e in range(len(a)):
        for i in range(node_ptr[a[e]], node_ptr[a[e] + 1]):
            for j in range(node_ptr[b[e]], node_ptr[b[e] + 1]):
                if node_label[i] == node_label[j]:
                    ri, rj = _find(parent, i), _find(parent, j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
    for n in range(len(parent)):
        parent[n] = _find(parent, n)
    return parent


@numba.njit(cache=True)
def label_node_pairs(node_ptr, node_label, a, b):
    """The pairs of (cell, label) nodes that ``label_components`` joins: nodes of one label in adjacent cells
    (layout as there). Returns two int64 arrays (i, j), each pair once."""
    count = 0
    for e in range(len(a)):
        for i in range(node_ptr[a[e]], node_ptr[a[e] + 1]):
            for j in range(node_ptr[b[e]], node_ptr[b[e] + 1]):
                if node_label[i] == node_label[j]:
                    count += 1
    out_i = np.empty(count, np.int64)
    out_j = np.empty(count, np.int64)
    k = 0
    for e in range(len(a)):
        for i in range(node_ptr[a[e]], node_ptr[a[e] + 1]):
            for j in range(node_ptr[b[e]], node_ptr[b[e] + 1]):
                if node_label[i] == node_label[j]:
                    out_i[k] = i
                    out_j[k] = j
                    k += 1
    return out_i, out_j


@numba.njit(cache=True)
def grow_components(component, pair_i, pair_j):
    """Breadth-first growth of labelled nodes over node pairs: a node with ``component`` -1 takes the component of
    the first labelled node whose growth reaches it (all seeds grow together, one step at a time). In place;
    returns ``component``."""
    n = len(component)
    degree = np.zeros(n + 1, np.int64)
    for e in range(len(pair_i)):
        degree[pair_i[e] + 1] += 1
        degree[pair_j[e] + 1] += 1
    ptr = np.cumsum(degree)
    fill = ptr[:-1].copy()
    neighbour = np.empty(ptr[-1], np.int64)
    for e in range(len(pair_i)):
        neighbour[fill[pair_i[e]]] = pair_j[e]
        fill[pair_i[e]] += 1
        neighbour[fill[pair_j[e]]] = pair_i[e]
        fill[pair_j[e]] += 1
    queue = np.empty(n, np.int64)
    head, tail = 0, 0
    for v in range(n):
        if component[v] >= 0:
            queue[tail] = v
            tail += 1
    while head < tail:
        v = queue[head]
        head += 1
        for k in range(ptr[v], ptr[v + 1]):
            w = neighbour[k]
            if component[w] < 0:
                component[w] = component[v]
                queue[tail] = w
                tail += 1
    return component

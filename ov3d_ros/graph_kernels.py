"""Compiled loops over graphs of grid cells: sums over a cell graph's edges and the Felzenszwalb-Huttenlocher merge
(``ov3d_ros.superpoints``), and the components of labelled cells split into object instances at narrow contacts
(``ov3d_ros.instances``).
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
def split_components(node_ptr, node_label, a, b, core_neighbours):
    """Components of (cell, label) nodes split at narrow contacts. Node ``n`` of cell ``c`` is one of
    ``node_ptr[c]:node_ptr[c + 1]`` with label ``node_label[n]``; for every pair of adjacent cells (a[e], b[e]) the
    nodes of one label are neighbours. Nodes with at
    least ``core_neighbours`` same-label neighbours are core; core nodes joined through core nodes are seeds; the
    other nodes join the seed whose breadth-first growth reaches them first; nodes no seed reaches form components
    among themselves. Returns each node's component (the index of one of its nodes)."""
    n = len(node_label)
    degree = np.zeros(n + 1, np.int64)
    for e in range(len(a)):
        for i in range(node_ptr[a[e]], node_ptr[a[e] + 1]):
            for j in range(node_ptr[b[e]], node_ptr[b[e] + 1]):
                if node_label[i] == node_label[j]:
                    degree[i + 1] += 1
                    degree[j + 1] += 1
    ptr = np.cumsum(degree)
    fill = ptr[:-1].copy()
    neighbour = np.empty(ptr[-1], np.int64)
    for e in range(len(a)):
        for i in range(node_ptr[a[e]], node_ptr[a[e] + 1]):
            for j in range(node_ptr[b[e]], node_ptr[b[e] + 1]):
                if node_label[i] == node_label[j]:
                    neighbour[fill[i]] = j
                    fill[i] += 1
                    neighbour[fill[j]] = i
                    fill[j] += 1
    parent = np.arange(n)
    core = np.empty(n, np.bool_)
    for v in range(n):
        core[v] = ptr[v + 1] - ptr[v] >= core_neighbours
    for v in range(n):
        if core[v]:
            for k in range(ptr[v], ptr[v + 1]):
                w = neighbour[k]
                if core[w]:
                    rv, rw = _find(parent, v), _find(parent, w)
                    if rv != rw:
                        parent[max(rv, rw)] = min(rv, rw)
    component = np.full(n, -1, np.int64)
    queue = np.empty(n, np.int64)
    head, tail = 0, 0
    for v in range(n):
        if core[v]:
            component[v] = _find(parent, v)
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
    for v in range(n):  # what no seed reached: components of its own
        if component[v] < 0:
            for k in range(ptr[v], ptr[v + 1]):
                w = neighbour[k]
                if component[w] < 0:
                    rv, rw = _find(parent, v), _find(parent, w)
                    if rv != rw:
                        parent[max(rv, rw)] = min(rv, rw)
    for v in range(n):
        if component[v] < 0:
            component[v] = _find(parent, v)
    return component

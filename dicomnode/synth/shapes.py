"""Parametric solids seen in projection: the chord length (mm) a ray parallel to the camera axis
travels through each solid, evaluated on patient coordinates in millimetres.

A planar camera records, per pixel, the activity integrated along the ray through the patient
(the line integral of activity concentration).  For a solid of uniform concentration that integral
is concentration × chord length, so every shape here returns the chord length in mm as a function
of the coronal-plane position (x to the patient's left, y towards the feet).  Shapes also say where
they lie in depth (a fraction of the local body thickness, 0 = anterior skin, 1 = posterior skin),
which the physics turns into per-view attenuation and collimator blur, and how to draw a random
point inside them (for placing lesions).

All shapes are convex-ish primitives whose chord falls smoothly to zero at the edge (ellipsoidal
cross-sections), so sampling them at 2.26 mm or 1.13 mm pixels gives the same patient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

BBox = tuple[float, float, float, float]  # (x_min, x_max, y_min, y_max) in patient mm


@dataclass(frozen=True)
class InteriorPoint:
    """A random point inside a bone, with what a lesion placed there needs to know."""

    x: float
    y: float
    axis_angle: float  # direction of the bone's long axis in the coronal plane (radians from +x)
    half_width: float  # bone half-width across the long axis at this point (mm)
    half_depth: float  # half of the bone's chord along the camera axis at this point (mm)
    depth_fraction: float  # 0 anterior skin … 1 posterior skin


class Shape(ABC):
    """A solid: its coronal bounding box, its chord map and its depth-fraction map."""

    @abstractmethod
    def bbox(self) -> BBox:
        """(x_min, x_max, y_min, y_max) in patient mm."""

    @abstractmethod
    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Chord length (mm) along the camera axis at each coronal position."""

    @abstractmethod
    def depth_fraction(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
        """Depth of the solid's centre as a fraction of the local body thickness (0 = anterior)."""

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> InteriorPoint:
        """A random point inside the solid, for placing a lesion."""

    def chord_and_depth(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
        """Both maps at once (shapes whose two maps share work override this)."""
        return self.chord(x, y), self.depth_fraction(x, y)


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid with coronal semi-axes ``a`` (along ``angle``) and ``b``, depth semi-axis ``c``."""

    cx: float
    cy: float
    a: float
    b: float
    c: float
    angle: float = 0.0
    depth: float = 0.5

    def bbox(self) -> BBox:
        r = max(self.a, self.b)
        return (self.cx - r, self.cx + r, self.cy - r, self.cy + r)

    def _q(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        u = (dx * cos + dy * sin) / self.a
        v = (-dx * sin + dy * cos) / self.b
        return u * u + v * v

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return 2.0 * self.c * np.sqrt(np.clip(1.0 - self._q(x, y), 0.0, None))

    def depth_fraction(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.depth

    def sample(self, rng: np.random.Generator) -> InteriorPoint:
        r = 0.7 * np.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * np.pi)
        u, v = r * np.cos(phi) * self.a, r * np.sin(phi) * self.b
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x, y = self.cx + u * cos - v * sin, self.cy + u * sin + v * cos
        long_axis = self.angle if self.a >= self.b else self.angle + np.pi / 2
        half_depth = float(self.chord(np.array(x), np.array(y))) / 2
        return InteriorPoint(x, y, long_axis, min(self.a, self.b), half_depth, self.depth)


@dataclass(frozen=True)
class Shell(Shape):
    """A hollow ellipsoid (e.g. the calvarium): an outer ellipsoid minus an inner one ``thickness`` smaller.

    ``weight`` scales the chord so that a shell can be split into an anterior and a posterior half
    (each ``weight`` = 0.5) that sit at different depths.
    """

    outer: Ellipsoid
    thickness: float
    weight: float = 1.0

    @property
    def inner(self) -> Ellipsoid:
        o, t = self.outer, self.thickness
        return Ellipsoid(o.cx, o.cy, o.a - t, o.b - t, o.c - t, o.angle, o.depth)

    def bbox(self) -> BBox:
        return self.outer.bbox()

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.weight * (self.outer.chord(x, y) - self.inner.chord(x, y))

    def depth_fraction(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.outer.depth

    def sample(self, rng: np.random.Generator) -> InteriorPoint:
        point = self.outer.sample(rng)
        return InteriorPoint(point.x, point.y, point.axis_angle, self.thickness * 2,
                             self.thickness, self.outer.depth)


@dataclass(frozen=True)
class Tube(Shape):
    """A bone or limb along a polyline: circular-ish cross-section of radius ``radius`` (tapering
    linearly between nodes), flattened in depth by ``aspect`` (AP semi-axis = aspect × radius).

    ``depths`` gives the depth fraction at each node (interpolated along the tube), so a rib can run
    from the back (0.85) round the side (0.5) to the front (0.12).
    """

    points: tuple[tuple[float, float], ...]
    radii: tuple[float, ...]
    depths: tuple[float, ...]
    aspect: float = 1.0

    def __post_init__(self) -> None:
        if not (len(self.points) == len(self.radii) == len(self.depths)) or len(self.points) < 2:
            raise ValueError("a tube needs >= 2 points with one radius and one depth each")

    def bbox(self) -> BBox:
        pts = np.asarray(self.points)
        r = max(self.radii)
        return (pts[:, 0].min() - r, pts[:, 0].max() + r, pts[:, 1].min() - r, pts[:, 1].max() + r)

    def _nearest(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distance to the axis, interpolated radius and interpolated depth at each point."""
        pts = np.asarray(self.points, dtype=float)
        best_d = np.full(np.shape(x), np.inf)
        best_r = np.zeros(np.shape(x))
        best_f = np.zeros(np.shape(x))
        for i in range(len(pts) - 1):
            p0, p1 = pts[i], pts[i + 1]
            seg = p1 - p0
            length2 = float(seg @ seg) or 1e-9
            t = np.clip(((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1]) / length2, 0.0, 1.0)
            d = np.hypot(x - (p0[0] + t * seg[0]), y - (p0[1] + t * seg[1]))
            r = self.radii[i] + t * (self.radii[i + 1] - self.radii[i])
            f = self.depths[i] + t * (self.depths[i + 1] - self.depths[i])
            # choose the segment whose surface is nearest (relative to its radius)
            closer = d / r < best_d
            best_d = np.where(closer, d / r, best_d)
            best_r = np.where(closer, r, best_r)
            best_f = np.where(closer, f, best_f)
        return best_d, best_r, best_f

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.chord_and_depth(x, y)[0]

    def chord_and_depth(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel, r, f = self._nearest(x, y)
        return 2.0 * self.aspect * r * np.sqrt(np.clip(1.0 - rel * rel, 0.0, None)), f

    def depth_fraction(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._nearest(x, y)[2]

    def segment_lengths(self) -> np.ndarray:
        return np.hypot(*np.diff(np.asarray(self.points, dtype=float), axis=0).T)

    def sample(self, rng: np.random.Generator, t: float | None = None) -> InteriorPoint:
        """A point on the axis; ``t`` in [0, 1] is the fraction of the tube's length from its first
        node (uniform when not given)."""
        lengths = self.segment_lengths()
        total = float(lengths.sum())
        s = (rng.uniform() if t is None else t) * total
        i = int(np.searchsorted(np.cumsum(lengths), s, side="right"))
        i = min(i, len(lengths) - 1)
        u = (s - float(lengths[:i].sum())) / max(float(lengths[i]), 1e-9)
        p0, p1 = np.asarray(self.points[i]), np.asarray(self.points[i + 1])
        x, y = p0 + u * (p1 - p0)
        r = self.radii[i] + u * (self.radii[i + 1] - self.radii[i])
        f = self.depths[i] + u * (self.depths[i + 1] - self.depths[i])
        angle = float(np.arctan2(p1[1] - p0[1], p1[0] - p0[0]))
        return InteriorPoint(float(x), float(y), angle, r, self.aspect * r, f)


@dataclass(frozen=True)
class Plate(Shape):
    """A flat bone (scapula blade, iliac wing) as a triangle of constant projected ``thickness`` with
    edges softened over ``edge`` mm."""

    vertices: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    thickness: float
    depth: float
    edge: float = 3.0

    def bbox(self) -> BBox:
        v = np.asarray(self.vertices)
        return (v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max())

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.thickness * np.clip(self._inside_distance(x, y) / self.edge, 0.0, 1.0)

    def depth_fraction(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.depth

    def _inside_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance to the nearest edge, positive inside (mm)."""
        v = np.asarray(self.vertices, dtype=float)
        area = (v[1, 0] - v[0, 0]) * (v[2, 1] - v[0, 1]) - (v[2, 0] - v[0, 0]) * (v[1, 1] - v[0, 1])
        sign = 1.0 if area > 0 else -1.0
        inside = np.full(np.shape(x), np.inf)
        for i in range(3):
            p0, p1 = v[i], v[(i + 1) % 3]
            edge = p1 - p0
            d = sign * (edge[0] * (y - p0[1]) - edge[1] * (x - p0[0])) / np.hypot(*edge)
            inside = np.minimum(inside, d)
        return inside

    def sample(self, rng: np.random.Generator) -> InteriorPoint:
        w = rng.dirichlet((2.0, 2.0, 2.0))  # keeps points away from the edges
        v = np.asarray(self.vertices, dtype=float)
        x, y = w @ v
        side = v[2] - v[0]  # the longest border of a scapula / iliac wing runs first to third vertex
        half_width = float(self._inside_distance(np.array(x), np.array(y)))
        return InteriorPoint(float(x), float(y), float(np.arctan2(side[1], side[0])),
                             max(half_width, 3.0), self.thickness / 2, self.depth)


@dataclass(frozen=True)
class Trunk(Shape):
    """The torso: elliptical cross-sections whose half-width and half-depth vary with ``y``
    (interpolated between nodes), with the top and bottom rounded off over ``round_mm``."""

    ys: tuple[float, ...]
    half_widths: tuple[float, ...]
    half_depths: tuple[float, ...]
    round_mm: float = 20.0

    def bbox(self) -> BBox:
        w = max(self.half_widths)
        return (-w, w, self.ys[0], self.ys[-1])

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        w = np.interp(y, self.ys, self.half_widths)
        c = np.interp(y, self.ys, self.half_depths)
        ends = np.clip(np.minimum(y - self.ys[0], self.ys[-1] - y) / self.round_mm, 0.0, 1.0)
        return 2.0 * c * np.sqrt(np.clip(1.0 - (x / w) ** 2, 0.0, None) * np.sqrt(ends))

    def depth_fraction(self, x: np.ndarray, y: np.ndarray) -> float:
        return 0.5

    def sample(self, rng: np.random.Generator) -> InteriorPoint:
        raise TypeError("the trunk is soft tissue; lesions are placed on bones")

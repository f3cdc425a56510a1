"""Arm constants and the calibrated pinhole camera model of docs/design.rst.

World frame: origin on the table plane at the base axis, z up, theta = 0 along +x,
theta counter-clockwise seen from above. A frame taken at base pulse width ``p`` has
``theta_p = (p - zero_pw) * rotation_range_as_deg / rotation_range_as_pw``; the camera
centre sits at ``(offset_mm cos theta_p, offset_mm sin theta_p, height_mm)`` and looks
along ``(cos theta_p, sin theta_p, 0)`` tilted down by ``pitch_deg``; image x points to
the right of the viewing direction, image y down, no roll.

The simulator renders through this model and the geometry stage inverts it, so both
share this one implementation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from sorterbot_cloud.errors import InvalidArmConstants
from sorterbot_cloud.structures import ID_PATTERN

#: Period of the 50 Hz control signal of standard RC servos (µs): no pulse is longer.
SERVO_PERIOD_US = 20_000.0
#: Largest side of a JPEG image (pixels): its size fields are 16 bits.
MAX_IMAGE_SIDE_PX = 65_535
#: Largest length accepted for a camera mounting or a reach (mm); the reference arm
#: reaches 150 to 450 mm, so 10 m is far beyond any table-top arm.
MAX_LENGTH_MM = 10_000.0
#: Narrowest and widest field of view of a pinhole camera accepted (degrees).
FIELD_OF_VIEW_RANGE_DEG = (1.0, 170.0)
#: Least difference between ``r_max_mm`` and ``r_min_mm`` (mm).
MIN_REACH_SPAN_MM = 1.0


def _focal_range_px(size_px: int) -> tuple[float, float]:
    """Focal lengths (pixels) that give an image side of ``size_px`` pixels a field of view
    within :data:`FIELD_OF_VIEW_RANGE_DEG`: ``size / (2 tan(fov / 2))``."""
    narrow_deg, wide_deg = FIELD_OF_VIEW_RANGE_DEG
    return (size_px / (2 * math.tan(math.radians(wide_deg / 2))), size_px / (2 * math.tan(math.radians(narrow_deg / 2))))


#: Accepted range of each arm constant: ``name: (low, high, signed, unit)``; a ``signed``
#: constant may be negative and its magnitude must lie in ``[low, high]``. The ranges of
#: ``camera.fx``, ``camera.fy``, ``camera.cx`` and ``camera.cy`` depend on the calibrated
#: image size (:meth:`ArmConstants.from_mapping` says how); their rows give the widest
#: values. Where each range comes from: :meth:`ArmConstants.from_mapping`.
CONSTANT_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "arm_radius": (1.0, 1_000_000.0, False, "pixels"),
    "rotation_range_as_deg": (1.0, 360.0, True, "degrees"),
    "rotation_range_as_pw": (1.0, SERVO_PERIOD_US, True, "µs"),
    "dist_min_as_pw": (0.0, SERVO_PERIOD_US, False, "µs"),
    "dist_max_as_pw": (0.0, SERVO_PERIOD_US, False, "µs"),
    "zero_pw": (0.0, SERVO_PERIOD_US, False, "µs"),
    "r_min_mm": (0.0, MAX_LENGTH_MM, False, "mm"),
    "r_max_mm": (0.0, MAX_LENGTH_MM, False, "mm"),
    "camera.calib_width": (1.0, float(MAX_IMAGE_SIDE_PX), False, "pixels"),
    "camera.calib_height": (1.0, float(MAX_IMAGE_SIDE_PX), False, "pixels"),
    "camera.fx": (_focal_range_px(1)[0], _focal_range_px(MAX_IMAGE_SIDE_PX)[1], False, "pixels"),
    "camera.fy": (_focal_range_px(1)[0], _focal_range_px(MAX_IMAGE_SIDE_PX)[1], False, "pixels"),
    "camera.cx": (0.0, float(MAX_IMAGE_SIDE_PX), False, "pixels"),
    "camera.cy": (0.0, float(MAX_IMAGE_SIDE_PX), False, "pixels"),
    "camera.height_mm": (1.0, MAX_LENGTH_MM, False, "mm"),
    "camera.offset_mm": (0.0, MAX_LENGTH_MM, True, "mm"),
    "camera.pitch_deg": (1.0, 90.0, False, "degrees"),
}


def _span(low: float, high: float, signed: bool) -> str:
    """``"low to high"``, for a signed range ``"-high to -low or low to high"``."""
    if not signed:
        return f"{_number_text(low)} to {_number_text(high)}"
    if low == 0:
        return f"{_number_text(-high)} to {_number_text(high)}"
    return f"{_number_text(-high)} to {_number_text(-low)} or {_number_text(low)} to {_number_text(high)}"


def _number_text(value: float) -> str:
    """A bound for a message: ``1,000,000``, ``93,960``, ``71.74``."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _shown(value: Any) -> str:
    """A received value for a message: its ``repr``, shortened; an integer of many digits
    by its size (its ``repr`` can be thousands of characters)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**16:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _arm_id_of(value: Any) -> str | None:
    """The body's ``arm_id`` checked with the query's rule (:data:`~sorterbot_cloud.structures.ID_PATTERN`):
    None when absent or empty; an integer (the control panel's ids) as its decimal string.

    Raises
    ------
    InvalidArmConstants
        If the value is not 1 to 64 letters, digits, ``_``, ``-`` and ``.``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**64:
        value = str(value)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidArmConstants(
            f"arm constant 'arm_id' must be 1 to 64 characters of letters, digits, '_', '-' and '.', got {_shown(value)}"
        )
    return value


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics plus the camera's mounting on the arm.

    Parameters
    ----------
    fx, fy, cx, cy : float
        Intrinsics in pixels at ``calib_width x calib_height``.
    calib_width, calib_height : int
        Image size (pixels) the intrinsics were calibrated at.
    height_mm : float
        Camera centre above the table plane.
    offset_mm : float
        Horizontal distance of the camera centre from the base axis.
    pitch_deg : float
        Downward tilt of the optical axis (0 horizontal, 90 straight down).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    calib_width: int
    calib_height: int
    height_mm: float
    offset_mm: float
    pitch_deg: float

    @classmethod
    def reference(cls) -> "CameraModel":
        """The reference arm: Raspberry Pi camera v2 at 1640x1232.

        Field of view 62.2 x 48.8 degrees (Raspberry Pi camera v2 datasheet), so
        ``fx = 820 / tan(31.1 deg) = 1360 px`` and ``fy = 616 / tan(24.4 deg) = 1360 px``.
        Mounting (height 250 mm, offset 60 mm, pitch 50 deg) is the simulator's default
        and is not from a datasheet.
        """
        return cls(
            fx=820 / math.tan(math.radians(31.1)),
            fy=616 / math.tan(math.radians(24.4)),
            cx=820.0,
            cy=616.0,
            calib_width=1640,
            calib_height=1232,
            height_mm=250.0,
            offset_mm=60.0,
            pitch_deg=50.0,
        )

    def intrinsics(self, width_px: int, height_px: int) -> tuple[float, float, float, float]:
        """Intrinsics ``(fx, fy, cx, cy)`` in pixels scaled to a ``width_px x height_px`` frame."""
        sx = width_px / self.calib_width
        sy = height_px / self.calib_height
        return self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy

    def pose(self, theta_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Camera pose for a base angle.

        Returns
        -------
        rotation : ndarray of shape (3, 3), float64
            World-to-camera rotation; rows are the camera's right, down and forward axes
            in world coordinates.
        center_mm : ndarray of shape (3,), float64
            Camera centre in the world frame.
        """
        t = math.radians(theta_deg)
        p = math.radians(self.pitch_deg)
        forward = np.array([math.cos(t) * math.cos(p), math.sin(t) * math.cos(p), -math.sin(p)])
        right = np.array([math.sin(t), -math.cos(t), 0.0])
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        center = np.array([self.offset_mm * math.cos(t), self.offset_mm * math.sin(t), self.height_mm])
        return rotation, center

    def project(self, points_mm: np.ndarray, theta_deg: float, width_px: int, height_px: int) -> np.ndarray:
        """Project world points into a frame taken at base angle ``theta_deg``.

        Parameters
        ----------
        points_mm : ndarray of shape (N, 3), float, millimetres
        theta_deg : float
        width_px, height_px : int

        Returns
        -------
        ndarray of shape (N, 3), float64
            ``u_px, v_px, depth_mm``; depth <= 0 means behind the camera.
        """
        rotation, center = self.pose(theta_deg)
        fx, fy, cx, cy = self.intrinsics(width_px, height_px)
        cam = (np.asarray(points_mm, float).reshape(-1, 3) - center) @ rotation.T
        depth = cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        return np.stack([fx * cam[:, 0] / safe + cx, fy * cam[:, 1] / safe + cy, depth], axis=1)

    def rays(self, pixels_uv: np.ndarray, theta_deg: float, width_px: int, height_px: int) -> tuple[np.ndarray, np.ndarray]:
        """World-frame viewing rays through pixels.

        Returns
        -------
        center_mm : ndarray of shape (3,)
        directions : ndarray of shape (N, 3), unit vectors
        """
        rotation, center = self.pose(theta_deg)
        fx, fy, cx, cy = self.intrinsics(width_px, height_px)
        uv = np.asarray(pixels_uv, float).reshape(-1, 2)
        cam = np.stack([(uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy, np.ones(len(uv))], axis=1)
        world = cam @ rotation
        return center, world / np.linalg.norm(world, axis=1, keepdims=True)

    def backproject_to_plane(
        self, pixels_uv: np.ndarray, theta_deg: float, width_px: int, height_px: int, plane_z_mm: float | np.ndarray = 0.0
    ) -> np.ndarray:
        """Intersect the rays through pixels with the horizontal plane ``z = plane_z_mm``.

        Returns
        -------
        ndarray of shape (N, 3), float64, millimetres
            Rows are NaN where the ray does not reach the plane (at or above the horizon).
        """
        center, dirs = self.rays(pixels_uv, theta_deg, width_px, height_px)
        dz = dirs[:, 2]
        t = (np.asarray(plane_z_mm, float) - center[2]) / np.where(dz < -1e-9, dz, np.nan)
        points = center + t[:, None] * dirs
        points[~(t > 0)] = np.nan
        return points


@dataclass(frozen=True)
class ArmConstants:
    """The arm constants a session trigger carries (docs/design.rst, Arm constants).

    Parameters
    ----------
    arm_id : str or None
        The body's ``arm_id``: 1 to 64 of ``[A-Za-z0-9_.-]``, or None when absent.
    arm_radius : float
        Legacy: pixels from the image centre down to the arm axis.
    rotation_range_as_deg, rotation_range_as_pw : float
        The base servo turns ``rotation_range_as_deg`` degrees over ``rotation_range_as_pw`` µs.
    dist_min_as_pw, dist_max_as_pw : float
        Reach servo pulse widths (µs) at the nearest and farthest reach.
    camera : CameraModel or None
        Calibrated camera; when present the calibrated conversion is used.
    zero_pw : float
        Base pulse width (µs) at which theta = 0 (calibrated mode).
    r_min_mm, r_max_mm : float
        Reach mapped onto ``dist_min_as_pw .. dist_max_as_pw`` (calibrated mode).
    """

    arm_radius: float
    rotation_range_as_deg: float
    rotation_range_as_pw: float
    dist_min_as_pw: float
    dist_max_as_pw: float
    arm_id: str | None = None
    camera: CameraModel | None = None
    zero_pw: float = 1475.0
    r_min_mm: float = 150.0
    r_max_mm: float = 450.0

    LEGACY_KEYS = ("arm_radius", "rotation_range_as_deg", "rotation_range_as_pw", "dist_min_as_pw", "dist_max_as_pw")
    CAMERA_KEYS = ("fx", "fy", "cx", "cy", "calib_width", "calib_height", "height_mm", "offset_mm", "pitch_deg")

    @property
    def calibrated(self) -> bool:
        """Whether the calibrated camera conversion applies."""
        return self.camera is not None

    def theta_of_pw(self, pw0: float) -> float:
        """Base angle (degrees) of a base pulse width (µs), calibrated convention."""
        return (pw0 - self.zero_pw) * self.rotation_range_as_deg / self.rotation_range_as_pw

    def pw0_of_theta(self, theta_deg: float) -> float:
        """Base pulse width (µs) of a base angle (degrees), calibrated convention."""
        return self.zero_pw + theta_deg * self.rotation_range_as_pw / self.rotation_range_as_deg

    def pw1_of_r(self, r_mm: float) -> float:
        """Reach pulse width (µs) of a distance from the base axis (mm), linear over r_min..r_max."""
        return self.dist_min_as_pw + (r_mm - self.r_min_mm) / (self.r_max_mm - self.r_min_mm) * (
            self.dist_max_as_pw - self.dist_min_as_pw
        )

    @classmethod
    def from_mapping(cls, data: Any) -> "ArmConstants":
        """Validate and build arm constants from the trigger's JSON body.

        Every constant must be a finite JSON number inside the range of
        :data:`CONSTANT_RANGES`, chosen so that any arm this service can serve fits and
        the geometry stays finite:

        - pulse widths (``dist_min_as_pw``, ``dist_max_as_pw``, ``zero_pw``): 0 to
          20,000 µs, the period of the 50 Hz signal of standard RC servos (a pulse cannot
          be longer); ``|rotation_range_as_pw|``: 1 to 20,000 µs (negative for a servo
          mounted the other way round);
        - ``|rotation_range_as_deg|``: 1 to 360 degrees (the base turns at most a full
          turn over the servo's range; the reference arm turns 130, a standard hobby
          servo about 180);
        - ``arm_radius``: 1 to 1,000,000 pixels (the reference arm: 1400 px at
          1640x1232; the axis may lie far below the frame, not above its centre);
        - ``camera.calib_width``, ``camera.calib_height``: whole numbers of pixels, 1 to
          65,535 (JPEG's largest image side, its size fields being 16 bits);
        - ``camera.fx`` (``camera.fy``): a horizontal (vertical) field of view of 1 to
          170 degrees, i.e. ``calib_width / (2 tan 85 deg)`` to
          ``calib_width / (2 tan 0.5 deg)`` pixels (``calib_height`` for ``fy``); a
          pinhole camera cannot see 180 degrees;
        - ``camera.cx`` (``camera.cy``): the principal point lies on the calibrated image,
          0 to ``calib_width`` (``calib_height``) pixels;
        - ``camera.pitch_deg``: 1 to 90 degrees (the camera must look down at the table;
          90 is straight down);
        - lengths: ``camera.height_mm`` 1 to 10,000 mm, ``|camera.offset_mm|`` at most
          10,000 mm, ``r_min_mm`` and ``r_max_mm`` 0 to 10,000 mm with ``r_max_mm`` at
          least 1 mm beyond ``r_min_mm`` (10 m is far beyond the reach of a table-top
          arm: the reference arm reaches 150 to 450 mm);
        - ``dist_min_as_pw`` and ``dist_max_as_pw`` must differ.

        ``arm_id``, when present and not empty, follows the rule of the query's
        (docs/design.rst, Terms): 1 to 64 letters, digits, ``_``, ``-`` and ``.``; an integer is
        taken as its decimal string.

        Parameters
        ----------
        data : mapping
            The trigger body: the original ``arm_config.yaml`` keys, optionally ``arm_id``
            and a ``camera`` block with ``zero_pw``, ``r_min_mm`` and ``r_max_mm``.

        Returns
        -------
        ArmConstants

        Raises
        ------
        InvalidArmConstants
            If ``data`` is not an object, a required key is missing, a value is not a
            finite number or lies outside its range (the message names the field), or a
            range is empty (e.g. ``dist_min_as_pw == dist_max_as_pw``).
        """
        if not isinstance(data, Mapping):
            raise InvalidArmConstants(f"arm constants must be a JSON object, got {type(data).__name__}")

        def number(source: Mapping, key: str, where: str = "", bounds: tuple[float, float] | None = None,
                   why: str = "") -> float:
            name = where + key
            if key not in source:
                raise InvalidArmConstants(f"missing arm constant {name!r}")
            value = source[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise InvalidArmConstants(f"arm constant {name!r} must be a finite number, got {_shown(value)}")
            low, high, signed, unit = CONSTANT_RANGES[name]
            if bounds is not None:
                low, high = bounds
            # compared before any float conversion: an integer of hundreds of digits overflows a float
            if not low <= (abs(value) if signed else value) <= high:
                raise InvalidArmConstants(
                    f"arm constant {name!r} must be {_span(low, high, signed)} {unit}{why}, got {_shown(value)}"
                )
            return float(value)

        kwargs: dict[str, Any] = {key: number(data, key) for key in cls.LEGACY_KEYS}
        if kwargs["dist_max_as_pw"] == kwargs["dist_min_as_pw"]:
            raise InvalidArmConstants("dist_min_as_pw and dist_max_as_pw must differ")
        kwargs["arm_id"] = _arm_id_of(data.get("arm_id"))
        camera = data.get("camera")
        if camera is not None:
            if not isinstance(camera, Mapping):
                raise InvalidArmConstants("camera must be a JSON object")
            cam: dict[str, Any] = {}
            for key in ("calib_width", "calib_height"):
                cam[key] = number(camera, key, "camera.")
                if not cam[key].is_integer():
                    raise InvalidArmConstants(f"arm constant 'camera.{key}' must be a whole number of pixels, got {cam[key]:g}")
                cam[key] = int(cam[key])
            for key, side in (("fx", "calib_width"), ("fy", "calib_height")):
                cam[key] = number(camera, key, "camera.", bounds=_focal_range_px(cam[side]),
                                  why=f" (a field of view of {FIELD_OF_VIEW_RANGE_DEG[0]:g} to "
                                      f"{FIELD_OF_VIEW_RANGE_DEG[1]:g} degrees over {side} {cam[side]})")
            for key, side in (("cx", "calib_width"), ("cy", "calib_height")):
                cam[key] = number(camera, key, "camera.", bounds=(0.0, float(cam[side])),
                                  why=f" (on the calibrated image, {side} {cam[side]})")
            for key in ("height_mm", "offset_mm", "pitch_deg"):
                cam[key] = number(camera, key, "camera.")
            kwargs["camera"] = CameraModel(**{key: cam[key] for key in cls.CAMERA_KEYS})
            for key in ("zero_pw", "r_min_mm", "r_max_mm"):
                kwargs[key] = number(data, key)
            if kwargs["r_max_mm"] - kwargs["r_min_mm"] < MIN_REACH_SPAN_MM:
                raise InvalidArmConstants(
                    f"r_max_mm must be greater than r_min_mm by at least {MIN_REACH_SPAN_MM:g} mm, "
                    f"got r_min_mm {kwargs['r_min_mm']:g} and r_max_mm {kwargs['r_max_mm']:g}"
                )
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """JSON-ready mapping accepted by :meth:`from_mapping`."""
        out = {key: getattr(self, key) for key in self.LEGACY_KEYS}
        if self.arm_id is not None:
            out["arm_id"] = self.arm_id
        if self.camera is not None:
            out["camera"] = asdict(self.camera)
            out.update(zero_pw=self.zero_pw, r_min_mm=self.r_min_mm, r_max_mm=self.r_max_mm)
        return out

    @classmethod
    def reference(cls, arm_id: str = "ARM001", calibrated: bool = True) -> "ArmConstants":
        """Constants of the reference arm (docs/design.rst): 130 degrees over 1400 µs.

        Legacy keys follow the original ``arm_config.yaml`` scale for a 1640x1232 frame.
        """
        return cls(
            arm_id=arm_id,
            arm_radius=1400.0,
            rotation_range_as_deg=130.0,
            rotation_range_as_pw=1400.0,
            dist_min_as_pw=1200.0,
            dist_max_as_pw=1900.0,
            camera=CameraModel.reference() if calibrated else None,
            zero_pw=1475.0,
            r_min_mm=150.0,
            r_max_mm=450.0,
        )

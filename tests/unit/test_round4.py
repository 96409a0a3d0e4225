"""policy.arbitration.round4 is round(x, 4), bit for bit (the decision trace must not change)."""

import math
import random
import struct

from policy.arbitration import round4


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _same(a: float, b: float) -> bool:
    return _bits(a) == _bits(b) or (math.isnan(a) and math.isnan(b))


def test_round4_is_round_to_4_digits_for_every_kind_of_value() -> None:
    rng = random.Random(4)
    draws = [
        lambda: rng.random(),
        lambda: rng.uniform(-100.0, 100.0),
        lambda: rng.uniform(-1e8, 1e8),
        lambda: rng.gauss(0.0, 1e-3),
        # near and at the decimal ties x.xxxx5 (and binary ones, such as 1/32 = 0.03125)
        lambda: rng.randint(-10**6, 10**6) / 10000 + rng.choice([0.0, 5e-5, -5e-5, 1e-12, -1e-12]),
        lambda: rng.randint(-10**9, 10**9) / 2 ** rng.randint(0, 30),
        lambda: struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0],  # any double
        lambda: rng.random() * rng.choice([40.0, 60.0, 1.5]) - rng.choice([0.0, 0.5, 3.0]),  # evs
    ]
    for draw in draws:
        for _ in range(50_000):
            x = draw()
            assert _same(round4(x), round(x, 4)), x
    for x in (0.0, -0.0, 0.03125, -0.03125, 0.00005, -0.00005, 0.99995, 2.00005, 123.45675, 1e7, 1e7 + 0.5,
              5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan):
        assert _same(round4(x), round(x, 4)), x


def test_round4_keeps_what_round_gives_for_values_that_are_not_floats() -> None:
    # a hand-made Choice may carry int scores: round(1, 4) is the int 1, and the trace must show 1, not 1.0
    for x in (1, -3, 0, True, 12345678901234567):
        assert type(round4(x)) is type(round(x, 4)) and round4(x) == round(x, 4), x

"""A local stand-in for Huawei Cloud KPS and IAM: real HTTP, real auth checks, injectable faults.

`tasks` holds the task model, `signing` the AK/SK check, `answers` the response bodies, `faults`
the injectable misbehaviour, `server` the gateway and the KPS/IAM routes, `admin` the `/_sim/`
API and `cli` the command line (`python -m bot.sandbox.simulator`). Nothing here imports the bot.
"""

from bot.sandbox.simulator.faults import ERROR_SHAPES, FAULT_KINDS, Fault
from bot.sandbox.simulator.server import RecordedRequest, Simulator
from bot.sandbox.simulator.signing import expected_signature
from bot.sandbox.simulator.tasks import SimTask, seed_tasks

__all__ = [
    "ERROR_SHAPES",
    "FAULT_KINDS",
    "Fault",
    "RecordedRequest",
    "SimTask",
    "Simulator",
    "expected_signature",
    "seed_tasks",
]

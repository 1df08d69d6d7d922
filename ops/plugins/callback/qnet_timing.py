"""Task timing for QNet rollouts: the slowest tasks and the total, after the play recap.

ansible-core ships no timing callback (``profile_tasks`` and ``timer`` live in the
ansible.posix collection, which the controller does not have), so this small one does the
same job: it measures each task from its start until the last host reported, and prints the
slowest ones and the wall time of the whole run. Enabled in ops/ansible.cfg; the number of
tasks shown is ``QNET_TIMING_TASKS`` (default 12, 0 for none).
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: qnet_timing
    type: aggregate
    short_description: the slowest tasks and the total wall time of a playbook run
    description:
      - Prints, after the play recap, the slowest tasks (each from its start until its last
        host reported) and the wall time of the run.
    requirements:
      - enabled in ansible.cfg (callbacks_enabled = qnet_timing)
    options:
      tasks:
        description: How many of the slowest tasks to show (0 for none).
        default: 12
        type: int
        env:
          - name: QNET_TIMING_TASKS
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "qnet_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = time.monotonic()
        self._play = ""
        # task uuid -> [play, task name, start, end]; the end moves with every host result.
        self._tasks: dict[str, list] = {}

    def _begin(self, task) -> None:
        now = time.monotonic()
        entry = self._tasks.setdefault(task._uuid, [self._play, task.get_name(), now, now])
        entry[3] = now

    def _end(self, result, *_args, **_kwargs) -> None:
        entry = self._tasks.get(result.task._uuid)
        if entry is not None:
            entry[3] = time.monotonic()

    def v2_playbook_on_play_start(self, play) -> None:
        self._play = play.get_name().strip()

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._begin(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._begin(task)

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = _end
    v2_runner_on_unreachable = _end

    def v2_playbook_on_stats(self, stats) -> None:
        shown = self.get_option("tasks")
        slowest = sorted(self._tasks.values(), key=lambda e: e[3] - e[2], reverse=True)
        if shown > 0 and slowest:
            self._display.banner("SLOWEST TASKS")
            for play, name, start, end in slowest[:shown]:
                self._display.display(f"{end - start:8.2f} s  {play} : {name}")
        total = time.monotonic() - self._started
        self._display.display(f"playbook run took {total:.1f} s ({len(self._tasks)} tasks)")

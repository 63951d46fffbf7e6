"""An rclpy node of its own (own context, given ROS_DOMAIN_ID) spinning in a background thread.

What CLI tools use to watch a graph they started (``wam-policy demo``, ``wam-policy eval``):
subclass it, create subscriptions on ``self.node``, then call :meth:`start`; :meth:`close`
shuts it down.
"""
from __future__ import annotations

import threading


class BackgroundNode:
    def __init__(self, name: str, domain_id: int | None = None):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = Context()
        rclpy.init(context=self.ctx, **({"domain_id": domain_id} if domain_id is not None else {}))
        self.node = rclpy.create_node(name, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def start(self) -> "BackgroundNode":
        self._thread.start()
        return self

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context is shut down by close()
            pass

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        self.ctx.try_shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

"""Training scheduler: the sans-IO planner (`planner`) and job lifecycle (`lifecycle`), the mock job model
(`jobmodel`), and the asyncio driver that runs on the Raft leader (`component`). The collective cost model lives
in `agents.collective`, below both this package and the placement strategies."""

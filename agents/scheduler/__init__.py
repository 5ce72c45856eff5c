"""Training scheduler: the sans-IO planner (`planner`), the collective cost model (`costmodel`), the mock job model
(`jobmodel`), and the asyncio driver that runs on the Raft leader (`component`)."""

"""The ledgers: what happened, kept apart from any counter and read by the report.

The bottom layer (it imports nothing of vpmu_core but `events`): ground truth per task and
vCPU (`truth`), the host cycles charged per operation (`costs`), silent-error intervals and
leaks (`silent`). The engine, the hypervisor and the modes write them; metrics reads them.
"""

"""Where a job runs and how its replicas talk.

`placement` (flags and TF_CONFIG), `communication` (gin `mirrored.*`, `multi_worker.*`), `strategies` (the factory),
`tasks` (this process's role), `lost_workers`, `preemption`, `virtual_cpus`, and `launch` (local multi-worker jobs).
"""

"""Where and how a job runs: device, precision, memory layout, worker processes and torchrun
(`setup`), and the per-machine measurements that choose between fast paths (`probe`).

Below the jobs (train, infer, export) because each of them runs somewhere: the choice of device and
the probe's answers belong to the machine, not to one job."""

"""The job runtime: the runner, the stages' context, the workspace, the stage worker and its client, the protocol server, photos and devices."""

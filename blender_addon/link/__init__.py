"""The add-on's link to the backend: the client process, the running job, setting up the backend."""

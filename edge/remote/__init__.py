"""Remote operations from the backend: signed updates with a health window and automatic rollback,
remote log level, config get/apply and diagnostics upload (issue 20; docs/DEPLOY.md section 9,
docs/TELEMETRY.md "Remote operations").

Two sides, two processes:

- in the daemon (:mod:`edge.remote.update`, :mod:`edge.remote.commands`): the command handlers. The
  download and its checks run in a worker thread, never on the event loop; when every connector is idle the
  verified release is handed over as a request file in the state directory;
- the installer (:mod:`edge.remote.installer`, run as root by ``cabinet-edge-update.service`` when that file
  appears): checks the signature again, installs the release beside the running one with deploy/install.sh,
  restarts, watches the health window and rolls back by itself. Its status file is what both sides report.
"""

"""Names of the files and folders a training run writes into ``--output_dir``.

One place, imported by ``train/`` (which writes them), ``tuners/`` (the plan's files) and ``infer/``
(which reads a run back), so that no layer imports another one for a file name.
"""

CONFIG_FILE = "args.yaml"  # the fully resolved settings, in the run folder and in every checkpoint
FINAL_DIR = "checkpoint-final"  # the final weights (or adapter), processor and chat template
LOG_FILE = "logging.jsonl"  # one JSON record per log step (loss, learning rate, alarms ...)
PLOT_FILE = "loss.png"
LAST = "last"  # symlink to the newest complete checkpoint
STAGING_DIR = ".staging"  # checkpoints are written here and renamed into place when whole
RESUME_FILE = "resume.json"  # per checkpoint: data fingerprint or stream position
SUMMARY_FILE = "run_summary.json"
MANIFEST_FILE = "trainable.json"  # the trainability plan: component x mode, parameters, learning rates
INITIAL_ADAPTER = "initial_adapter"  # a PiSSA/OLoRA adapter as initialised (for the final conversion)

# A run started from the web UI (`tailorkit web-ui`) also has, in its folder:
UI_JOB_FILE = "ui_run.json"  # how it was started: verb, settings file, working folder, process id, stop requests
UI_ARGS_FILE = "ui_args.yaml"  # the form's settings, the file the CLI was started with
UI_LOG_FILE = "ui_run.log"  # everything the process printed
UI_EXIT_FILE = "ui_exit.json"  # its exit status, written as it ends

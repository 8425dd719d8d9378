"""Entry point for `accelerate launch cli.py train ...`: the same commands as the `yolo-accel` script."""

from yolo_accel.cli import main

if __name__ == "__main__":
    main()

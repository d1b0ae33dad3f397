"""Session fixtures of the GPU tests."""

from deploy_fixtures import demo_bundle, small_demo_build  # noqa: F401

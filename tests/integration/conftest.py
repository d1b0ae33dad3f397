"""Session fixtures of the integration tests."""

from deploy_fixtures import demo_bundle, small_demo_build  # noqa: F401
from faults_fixtures import small_fs  # noqa: F401

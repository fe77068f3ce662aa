"""The test suite, a package so that tests and benchmarks import its modules by one name from the repository root
(``tests.families``, ``tests.helpers``, ``tests.reference``), and tests import ``benchmarks`` the same way: pytest
puts the root on ``sys.path`` for a package of tests, a benchmark script does so itself."""

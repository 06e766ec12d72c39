"""RAVN operator sinks: ``webhook``, ``syslog`` and ``falco`` (see ``ravn_sinks.plugin``)."""

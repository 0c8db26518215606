name              'backup_agent'
maintainer        'backup_agent maintainers'
maintainer_email  'backup-agent@example.com'
license           'Apache-2.0'
description       'Installs, configures and runs backup-agent (file, command and EBS snapshot backups to S3)'
version           '0.1.0'
chef_version      '>= 18'
# Placeholders until the cookbook is published: set both to the real repository (README.md,
# "Publishing") before `knife supermarket share`.
source_url        'https://github.com/example/backup_agent'
issues_url        'https://github.com/example/backup_agent/issues'

# Exactly what a real converge verifies: Debian 12 (the CI machine itself, and a systemd
# container) and Debian 13 (a systemd container); see README.md, "Platforms".
supports 'debian', '>= 12.0'

#
# Cookbook:: backup_agent
# Recipe:: install
#
# A venv with the pinned agent. pip runs only when the version or the pip settings differ from
# the last successful install (recorded in a marker file), so a no-op converge calls no pip.

install = node['backup_agent']['install']

package install['packages']

execute 'create backup-agent venv' do
  command [install['python'], '-m', 'venv', install['dir']]
  creates ::File.join(install['dir'], 'bin', 'pip')
end

execute 'install backup-agent' do
  command backup_agent_pip_command
  not_if { backup_agent_installed? }
end

# Written only after pip succeeded, so a failed install is retried on the next run.
file backup_agent_install_marker do
  content backup_agent_install_fingerprint
  owner 'root'
  group 'root'
  mode '0644'
end

# nil or false: no link (the agent stays at its venv path). A link elsewhere than
# /usr/local/bin gets its directory: a missing one used to fail the converge at this step.
if install['bin_link']
  directory ::File.dirname(install['bin_link']) do
    recursive true
  end

  link install['bin_link'] do
    to backup_agent_bin
  end
end

#
# Cookbook:: backup_agent
# Library:: helpers
#
# The recipe-side glue: where the agent lives, whether it needs (re)installing, which service
# manager applies, and the config built from attributes plus the secrets in node.run_state.

require 'digest'
require 'chef/mixin/shell_out'

module BackupAgentCookbook
  class ConfigError < StandardError; end

  # node.run_state key holding the loaded secrets. A wrapper cookbook may fill it before this
  # cookbook's recipes compile (e.g. from Vault) and the data bag is then not read.
  RUN_STATE_KEY = 'backup_agent_secrets'.freeze

  # Split out so specs can stub it: ChefSpec runs on whatever host the specs run on.
  def self.systemd_running?
    ::File.directory?('/run/systemd/system')
  end

  module Helpers
    include Chef::Mixin::ShellOut

    def backup_agent_install_dir
      node['backup_agent']['install']['dir']
    end

    def backup_agent_bin
      ::File.join(backup_agent_install_dir, 'bin', 'backup-agent')
    end

    def backup_agent_config_path
      node['backup_agent']['config']['path']
    end

    # --- install ---

    def backup_agent_pip_command
      install = node['backup_agent']['install']
      command = [::File.join(backup_agent_install_dir, 'bin', 'pip'), 'install',
                 '--disable-pip-version-check', '--no-input']
      command += ['--index-url', install['index_url']] if install['index_url']
      command << '--no-index' if install['no_index']
      Array(install['find_links']).each { |link| command += ['--find-links', link] }
      command += Array(install['pip_extra_args'])
      command << "backup-agent==#{install['version']}"
    end

    # What the marker file records about the last successful install: the version in clear and
    # a digest of the pip settings (an index URL may carry credentials; the marker need not).
    def backup_agent_install_fingerprint
      install = node['backup_agent']['install']
      settings = [install['python'], install['index_url'], Array(install['find_links']),
                  install['no_index'], Array(install['pip_extra_args'])]
      "backup-agent==#{install['version']}\n" \
        "pip-settings-sha256=#{Digest::SHA256.hexdigest(JSON.generate(settings))}\n"
    end

    def backup_agent_install_marker
      ::File.join(backup_agent_install_dir, '.chef-backup-agent-install')
    end

    # True when the pinned version is installed with the current pip settings: no pip call then.
    def backup_agent_installed?
      marker = backup_agent_install_marker
      ::File.executable?(backup_agent_bin) && ::File.exist?(marker) &&
        ::File.read(marker) == backup_agent_install_fingerprint
    end

    # --- secrets and config ---

    def backup_agent_secrets
      node.run_state[BackupAgentCookbook::RUN_STATE_KEY] ||=
        BackupAgentCookbook::Secrets.load(self, node['backup_agent']['data_bag'], node.chef_environment)
    end

    def backup_agent_config
      BackupAgentCookbook::ConfigBuilder.build(
        settings: node['backup_agent']['config'].to_hash.reject { |key, _| key == 'path' },
        jobs: node['backup_agent']['jobs'],
        secrets: node.run_state[BackupAgentCookbook::RUN_STATE_KEY],
        node_name: node.name,
        environment: node.chef_environment
      )
    end

    # Template verification. Raises rather than returning false: on false Chef copies the
    # rejected file, credentials included, into file_cache_path/failed_validations.
    # Before the first install there is no agent to ask, and nothing old to protect either.
    def backup_agent_validate_config(path)
      return true unless ::File.executable?(backup_agent_bin)

      result = shell_out(backup_agent_bin, '-c', path, 'validate')
      return true if result.exitstatus == 0

      # The agent's one-line error is its last line on stderr (log lines may come before it).
      reason = result.stderr.to_s.lines.map(&:strip).reject { |line| line.match?(/\A[[:punct:]]*\z/) }.last.to_s
      reason = "exit status #{result.exitstatus}" if reason.empty?
      raise BackupAgentCookbook::ConfigError,
            "backup_agent: `backup-agent validate` rejected the new #{backup_agent_config_path}, " \
            "which is left unchanged: #{reason}"
    end

    # --- service ---

    # 'systemd' or 'none'; 'auto' means systemd only where systemd is PID 1.
    def backup_agent_service_manager
      manager = node['backup_agent']['service']['manager']
      return manager unless manager == 'auto'
      BackupAgentCookbook.systemd_running? ? 'systemd' : 'none'
    end

    def backup_agent_service_managed?
      backup_agent_service_manager == 'systemd'
    end
  end
end

# Recipes, and resource blocks (guards, lazy values and verify blocks run with the resource as self).
Chef::DSL::Recipe.include(BackupAgentCookbook::Helpers)
Chef::Resource.include(BackupAgentCookbook::Helpers)
